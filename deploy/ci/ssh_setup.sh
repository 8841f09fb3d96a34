#!/usr/bin/env bash
# CI: SSH access to the deploy host as `ssh deploy ...` (.github/workflows/cicd.yml).
# Reads DEPLOY_HOST, DEPLOY_USER, DEPLOY_SSH_KEY (a private key) and DEPLOY_KNOWN_HOSTS (the
# host's `ssh-keyscan` lines, checked strictly: no trust on first use) from the environment.
set -euo pipefail
for name in DEPLOY_HOST DEPLOY_USER DEPLOY_SSH_KEY DEPLOY_KNOWN_HOSTS; do
  if [ -z "${!name:-}" ]; then
    echo "ssh_setup: the secret $name is not set (see deploy/README.md, CI/CD)" >&2
    exit 1
  fi
done
install -d -m 700 "$HOME/.ssh"
umask 077
printf '%s\n' "$DEPLOY_SSH_KEY" > "$HOME/.ssh/deploy_key"
printf '%s\n' "$DEPLOY_KNOWN_HOSTS" > "$HOME/.ssh/known_hosts"
cat > "$HOME/.ssh/config" <<CONFIG
Host deploy
  HostName $DEPLOY_HOST
  User $DEPLOY_USER
  IdentityFile $HOME/.ssh/deploy_key
  IdentitiesOnly yes
  StrictHostKeyChecking yes
  UserKnownHostsFile $HOME/.ssh/known_hosts
  ServerAliveInterval 30
  BatchMode yes
CONFIG
echo "ssh_setup: host alias deploy configured"
