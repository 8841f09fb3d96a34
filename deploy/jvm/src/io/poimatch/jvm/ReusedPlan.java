package io.poimatch.jvm;

import java.util.ArrayDeque;
import java.util.Collections;
import java.util.Deque;
import java.util.IdentityHashMap;
import java.util.Map;
import java.util.Set;
import org.apache.spark.Dependency;
import org.apache.spark.OneToOneDependency;
import org.apache.spark.Partition;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.SparkContext;
import org.apache.spark.TaskContext;
import org.apache.spark.rdd.RDD;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.execution.RDDScanExec;
import org.apache.spark.sql.execution.SparkPlan;
import org.apache.spark.sql.execution.exchange.Exchange;
import org.apache.spark.sql.execution.exchange.ReusedExchangeExec;
import scala.collection.Iterator;
import scala.reflect.ClassTag;
import scala.reflect.ClassTag$;

/**
 * A prepared query's plan executed once, its RDDs re-run on each run's rows.
 *
 * <p>{@link PreparedPlans#withInput} copies the plan per run, and executing the copy builds its
 * RDDs afresh: Spark's closure cleaner then reads every operator's class bytes and
 * test-serializes its closure (0.2 s of a warm 10-row match, 0.35-0.55 s of a 1,000-row match
 * against the POI table). An RDD is a recipe: a job computes it from its parents each time, unless
 * it is cached, or it reads a shuffle whose map output exists, or a broadcast already built. So a
 * plan whose input reaches its output through narrow dependencies only (no exchange, no shuffle
 * made inside an operator) is executed once over an {@link InputSlot}, an RDD of one partition
 * that reads whichever RDD it is bound to when a job is submitted, and each run binds the slot to
 * its rows. Plans that shuffle or broadcast their input are refused ({@link #of} returns null)
 * and stay with the copy per run.
 *
 * <p>Each run's output is a {@link Checked} RDD: a job that reads it after a later run has rebound
 * the slot fails with an error instead of reading the later run's rows.
 */
public final class ReusedPlan {
  private final InputSlot slot;
  private final RDD<InternalRow> root;

  private ReusedPlan(InputSlot slot, RDD<InternalRow> root) {
    this.slot = slot;
    this.root = root;
  }

  /**
   * {@code plan} (its scans of the RDD {@code standIn} reading a slot bound to {@code rows})
   * executed once, or null where a run cannot reuse its RDDs: an exchange reads the input (its
   * shuffle output or broadcast would be read again), or an operator shuffles it, or {@code rows}
   * is not one partition read through narrow dependencies only.
   */
  public static ReusedPlan of(SparkPlan plan, int standIn, RDD<InternalRow> rows) {
    if (!bindable(rows) || exchangesInput(plan, standIn)) {
      return null;
    }
    InputSlot slot = new InputSlot(rows.context());
    slot.bind(rows);
    RDD<InternalRow> root = PreparedPlans.withInput(plan, standIn, slot).execute();
    if (shufflesSlot(root, slot)) {
      return null;
    }
    return new ReusedPlan(slot, root);
  }

  /**
   * The plan's output over {@code rows}, read by the next job that reads it (before the next
   * run), or null where {@code rows} cannot be bound (more than one partition, or a shuffle in its
   * lineage: the slot's jobs would not run its map stage).
   */
  public RDD<InternalRow> run(RDD<InternalRow> rows) {
    if (!bindable(rows)) {
      return null;
    }
    return new Checked(root, slot, slot.bind(rows));
  }

  /** The RDD the plan's output reads (the same for every run). */
  public RDD<InternalRow> root() {
    return root;
  }

  /**
   * Whether {@code rows} is one partition with no shuffle in its lineage. Walking the lineage
   * also computes each RDD's dependencies on the driver, as the scheduler does for the RDDs it
   * knows: a task deserializes them, and some RDDs hold their parents in transient fields only.
   */
  private static boolean bindable(RDD<InternalRow> rows) {
    if (rows.getNumPartitions() != 1) {
      return false;
    }
    Set<RDD<?>> seen = Collections.newSetFromMap(new IdentityHashMap<>());
    Deque<RDD<?>> todo = new ArrayDeque<>();
    todo.push(rows);
    while (!todo.isEmpty()) {
      RDD<?> rdd = todo.pop();
      if (!seen.add(rdd)) {
        continue;
      }
      scala.collection.Iterator<Dependency<?>> deps = rdd.dependencies().iterator();
      while (deps.hasNext()) {
        Dependency<?> dep = deps.next();
        if (dep instanceof ShuffleDependency) {
          return false;
        }
        todo.push(dep.rdd());
      }
    }
    return true;
  }

  /** Whether an exchange (or a reuse of one) of {@code plan} reads the scans of {@code standIn}. */
  private static boolean exchangesInput(SparkPlan plan, int standIn) {
    return new Reads(standIn).exchanged(plan);
  }

  /** Whether a shuffle in {@code root}'s lineage reads {@code slot}. */
  private static boolean shufflesSlot(RDD<?> root, InputSlot slot) {
    return new Lineage(slot).shuffled(root);
  }

  private static final class Reads {
    private final int standIn;
    private final Map<SparkPlan, Boolean> known = new IdentityHashMap<>();
    private boolean exchanged;

    Reads(int standIn) {
      this.standIn = standIn;
    }

    boolean exchanged(SparkPlan plan) {
      reads(plan);
      return exchanged;
    }

    private boolean reads(SparkPlan node) {
      Boolean done = known.get(node);
      if (done != null) {
        return done;
      }
      boolean out;
      if (node instanceof RDDScanExec scan) {
        out = scan.rdd().id() == standIn;
      } else if (node instanceof ReusedExchangeExec reused) {
        out = reads(reused.child());
        exchanged |= out;
      } else {
        out = false;
        scala.collection.Iterator<SparkPlan> it = node.children().iterator();
        while (it.hasNext()) {
          out |= reads(it.next());
        }
        exchanged |= out && node instanceof Exchange;
      }
      known.put(node, out);
      return out;
    }
  }

  private static final class Lineage {
    private final InputSlot slot;
    private final Map<RDD<?>, Boolean> known = new IdentityHashMap<>();
    private boolean shuffled;

    Lineage(InputSlot slot) {
      this.slot = slot;
    }

    boolean shuffled(RDD<?> root) {
      reads(root);
      return shuffled;
    }

    private boolean reads(RDD<?> rdd) {
      Boolean done = known.get(rdd);
      if (done != null) {
        return done;
      }
      boolean out = rdd == slot;
      scala.collection.Iterator<Dependency<?>> deps = rdd.dependencies().iterator();
      while (deps.hasNext()) {
        Dependency<?> dep = deps.next();
        boolean parent = reads(dep.rdd());
        shuffled |= parent && dep instanceof ShuffleDependency;
        out |= parent;
      }
      known.put(rdd, out);
      return out;
    }
  }

  private static ClassTag<InternalRow> rowTag() {
    return ClassTag$.MODULE$.apply(InternalRow.class);
  }

  /** The one partition of an {@link InputSlot}. */
  static final class OnlyPartition implements Partition {
    private static final long serialVersionUID = 1L;

    @Override
    public int index() {
      return 0;
    }

    // Scala's trait asks for this bridge (javac does not see it as abstract)
    public boolean org$apache$spark$Partition$$super$equals(Object other) {
      return super.equals(other);
    }

    @Override
    public int hashCode() {
      return 0;
    }

    @Override
    public boolean equals(Object other) {
      return other instanceof OnlyPartition;
    }
  }

  /**
   * An RDD of one partition that reads the RDD it is bound to (one partition, narrow lineage).
   * The binding travels with each job's tasks (it is a field, serialized with the lineage when the
   * job is submitted), so it is the one at submission that a job reads.
   */
  static final class InputSlot extends RDD<InternalRow> {
    private static final long serialVersionUID = 1L;
    private RDD<InternalRow> current;
    private Partition currentPartition;
    private long binding;

    InputSlot(SparkContext sc) {
      super(sc, scala.collection.immutable.List$.MODULE$.empty(), rowTag());
    }

    synchronized long bind(RDD<InternalRow> rows) {
      current = rows;
      currentPartition = rows.partitions()[0];
      binding += 1;
      return binding;
    }

    synchronized long binding() {
      return binding;
    }

    @Override
    public Iterator<InternalRow> compute(Partition split, TaskContext context) {
      return current.iterator(currentPartition, context);
    }

    @Override
    public Partition[] getPartitions() {
      return new Partition[] {new OnlyPartition()};
    }
  }

  /** A run's output: the plan's RDD, read only while the slot holds this run's rows. */
  static final class Checked extends RDD<InternalRow> {
    private static final long serialVersionUID = 1L;
    private final RDD<InternalRow> root;
    private final InputSlot slot;
    private final long binding;

    Checked(RDD<InternalRow> root, InputSlot slot, long binding) {
      super(
          root.context(),
          scala.collection.immutable.List$.MODULE$.<Dependency<?>>empty()
              .$colon$colon(new OneToOneDependency<>(root)),
          rowTag());
      this.root = root;
      this.slot = slot;
      this.binding = binding;
    }

    @Override
    public Iterator<InternalRow> compute(Partition split, TaskContext context) {
      if (slot.binding() != binding) {
        throw new IllegalStateException(
            "poimatch: a prepared query ran on other rows before this run's output was read; "
                + "read each run's output before the next run of the same query");
      }
      return root.iterator(split, context);
    }

    @Override
    public Partition[] getPartitions() {
      return root.partitions();
    }
  }
}
