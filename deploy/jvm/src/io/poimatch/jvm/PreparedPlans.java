package io.poimatch.jvm;

import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;
import org.apache.spark.rdd.RDD;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.execution.RDDScanExec;
import org.apache.spark.sql.execution.SparkPlan;
import org.apache.spark.sql.execution.exchange.Exchange;
import org.apache.spark.sql.execution.exchange.ReusedExchangeExec;
import scala.jdk.javaapi.CollectionConverters;

/**
 * The copy step of {@code poimatch.stages.prepared.PreparedQuery.run} in one JVM call.
 *
 * <p>A prepared query's physical plan is copied per run with its stand-in's scans replaced by
 * scans of the new rows, and every operator above them copied ({@code withNewChildren}), so no
 * shuffle or broadcast of an earlier run is read again. Done from Python, that is five py4j
 * round trips per operator (a small match's pair query has ~200): about 0.3 s of a request. The
 * rules are the Python loop's, which stays as the fallback where this jar is not on the driver's
 * class path: an operator nothing beneath which reads the stand-in is shared, a scan of the
 * stand-in (by its RDD's id) reads the new rows with the same output, partitioning and ordering,
 * and a reused exchange reuses the copy of its exchange (each node is copied once, by identity).
 */
public final class PreparedPlans {
  private PreparedPlans() {}

  /** {@code plan} with its scans of the RDD {@code standIn} reading {@code rows} instead. */
  public static SparkPlan withInput(SparkPlan plan, int standIn, RDD<InternalRow> rows) {
    return new Copier(standIn, rows).copy(plan);
  }

  private static final class Copier {
    private final int standIn;
    private final RDD<InternalRow> rows;
    private final Map<SparkPlan, SparkPlan> copies = new IdentityHashMap<>();

    Copier(int standIn, RDD<InternalRow> rows) {
      this.standIn = standIn;
      this.rows = rows;
    }

    SparkPlan copy(SparkPlan node) {
      SparkPlan known = copies.get(node);
      if (known != null) {
        return known;
      }
      SparkPlan out;
      if (node instanceof RDDScanExec scan) {
        out =
            scan.rdd().id() != standIn
                ? node
                : scan.copy(
                    scan.output(),
                    rows,
                    scan.name(),
                    scan.outputPartitioning(),
                    scan.outputOrdering(),
                    scan.stream());
      } else if (node instanceof ReusedExchangeExec reused) {
        SparkPlan exchange = copy(reused.child());
        out =
            exchange == reused.child()
                ? node
                : new ReusedExchangeExec(reused.output(), (Exchange) exchange);
      } else {
        List<SparkPlan> children = new ArrayList<>();
        boolean changed = false;
        scala.collection.Iterator<SparkPlan> it = node.children().iterator();
        while (it.hasNext()) {
          SparkPlan child = it.next();
          SparkPlan copied = copy(child);
          changed |= copied != child;
          children.add(copied);
        }
        out = changed ? node.withNewChildren(CollectionConverters.asScala(children).toList()) : node;
      }
      copies.put(node, out);
      return out;
    }
  }
}
