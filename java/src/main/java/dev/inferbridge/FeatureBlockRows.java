package dev.inferbridge;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.AbstractList;
import java.util.Arrays;
import java.util.List;
import java.util.RandomAccess;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.transforms.DoFn;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TupleTag;

/**
 * {@link FeatureBlock}s to block Rows of {@link Blocks#inputSchema} (what {@link PackBlocks}
 * makes of Rows): keys as a list, features as float64 little-endian bytes, in bulk. A block
 * whose keys are not of the transform's type fails row by row (stage {@code input}).
 */
final class FeatureBlockRows extends DoFn<FeatureBlock, Row> {
  private static final long serialVersionUID = 1L;

  private final Schema blockSchema;
  private final FeatureBlock.KeyType keyType;
  private final TupleTag<Row> blocksTag;
  private final TupleTag<Row> failuresTag;

  FeatureBlockRows(Schema blockSchema, FeatureBlock.KeyType keyType, TupleTag<Row> blocksTag, TupleTag<Row> failuresTag) {
    this.blockSchema = blockSchema;
    this.keyType = keyType;
    this.blocksTag = blocksTag;
    this.failuresTag = failuresTag;
  }

  /** The Rows a block stands for ({@code key}, {@code features}): its failure Rows describe them so. */
  static Schema rowSchema(FeatureBlock.KeyType keyType) {
    return Schema.builder()
        .addField(Blocks.KEY, keyType == FeatureBlock.KeyType.INT64 ? FieldType.INT64 : FieldType.STRING)
        .addArrayField(Blocks.FEATURES, FieldType.DOUBLE)
        .build();
  }

  @ProcessElement
  public void processElement(@Element FeatureBlock block, MultiOutputReceiver out) {
    if (block.keyType() != keyType) {
      failEachRow(block, out);
      return;
    }
    double[] features = block.allFeatures();
    ByteBuffer bytes = ByteBuffer.allocate(features.length * 8).order(ByteOrder.LITTLE_ENDIAN);
    bytes.asDoubleBuffer().put(features);
    List<?> keys = keyType == FeatureBlock.KeyType.INT64 ? new LongList(block.longKeys()) : Arrays.asList(block.stringKeys());
    out.get(blocksTag).output(Row.withSchema(blockSchema).attachValues(keys, bytes.array(), block.featureCount()));
  }

  private void failEachRow(FeatureBlock block, MultiOutputReceiver out) {
    Schema rows = rowSchema(block.keyType());
    String message =
        "the block's keys are " + block.keyType() + "; this overBlocks(" + keyType + ") takes " + keyType
            + " keys (one key type per transform)";
    for (int i = 0; i < block.size(); i++) {
      double[] features = block.features(i);
      Double[] boxed = new Double[features.length];
      for (int f = 0; f < features.length; f++) {
        boxed[f] = features[f];
      }
      Row row = Row.withSchema(rows).addValues(block.key(i), Arrays.asList(boxed)).build();
      out.get(failuresTag)
          .output(
              Row.withSchema(Inference.FAILURE_SCHEMA)
                  .addValues("input", null, PackBlocks.ERROR_TYPE, message, Json.row(row), String.valueOf(block.key(i)), null)
                  .build());
    }
  }

  /** A block's long keys as the list a block Row holds, boxed only as the coder reads them. */
  private static final class LongList extends AbstractList<Long> implements RandomAccess {
    private final long[] values;

    LongList(long[] values) {
      this.values = values;
    }

    @Override
    public Long get(int i) {
      return values[i];
    }

    @Override
    public int size() {
      return values.length;
    }
  }
}
