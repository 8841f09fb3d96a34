"""``python -m poimatch.apps.service``: the REST service (see :func:`main`)."""

from poimatch.apps.service import main

if __name__ == "__main__":
    main()
