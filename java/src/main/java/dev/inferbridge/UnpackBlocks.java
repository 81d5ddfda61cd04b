package dev.inferbridge;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.List;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.TypeName;
import org.apache.beam.sdk.transforms.DoFn;
import org.apache.beam.sdk.values.Row;

/**
 * Unpacks the result blocks of Python ({@link Blocks#resultSchema}) into one inference Row per
 * key ({@link Blocks#unpackedSchema}), in block order, with the block's timestamp and window. A
 * block whose columns do not agree is an error of the service, which fails the bundle.
 */
final class UnpackBlocks extends DoFn<Row, Row> {
  private static final long serialVersionUID = 1L;

  private final Schema outputSchema;
  private final InferenceKind kind;
  private final TypeName keyType;
  private final String endpoint;
  private final int keyIndex;
  private final int inferenceIndex;
  private final int widthIndex;
  private final int modelIdIndex;
  private final String[] passthroughFields;
  private final int[] passthroughIndices;

  /**
   * Unpacks blocks of {@code blockSchema} (as the service returned it: fields are found by name)
   * into Rows of {@code outputSchema}; {@code keyType} is the input key's type, to which the wire
   * keys are converted back.
   */
  UnpackBlocks(
      Schema blockSchema,
      Schema outputSchema,
      InferenceKind kind,
      TypeName keyType,
      List<String> passthroughFields,
      String endpoint) {
    this.outputSchema = outputSchema;
    this.kind = kind;
    this.keyType = keyType;
    this.endpoint = endpoint;
    this.keyIndex = blockSchema.indexOf(Blocks.KEY);
    this.inferenceIndex = blockSchema.indexOf(Blocks.INFERENCE);
    this.widthIndex = blockSchema.indexOf(Blocks.INFERENCE_WIDTH);
    this.modelIdIndex = blockSchema.indexOf(Blocks.MODEL_ID);
    this.passthroughFields = passthroughFields.toArray(new String[0]);
    this.passthroughIndices = new int[this.passthroughFields.length];
    for (int i = 0; i < passthroughIndices.length; i++) {
      passthroughIndices[i] = blockSchema.indexOf(this.passthroughFields[i]);
    }
  }

  @ProcessElement
  public void processElement(@Element Row block, OutputReceiver<Row> out) {
    List<?> keys = block.getValue(keyIndex);
    int n = keys.size();
    Integer widthValue = block.getValue(widthIndex);
    int width = widthValue;
    String modelId = block.getValue(modelIdIndex);
    int fields = 3 + passthroughIndices.length;
    List<?>[] passthrough = new List<?>[passthroughIndices.length];
    for (int p = 0; p < passthrough.length; p++) {
      passthrough[p] = block.getValue(passthroughIndices[p]);
      if (passthrough[p].size() != n) {
        throw malformed(block, "the passthrough field '" + passthroughFields[p] + "' has " + passthrough[p].size()
            + " values for " + n + " keys");
      }
    }
    Object[][] rows = new Object[n][];
    for (int i = 0; i < n; i++) {
      Object[] values = new Object[fields];
      values[0] = key(keys.get(i));
      values[2] = modelId;
      for (int p = 0; p < passthrough.length; p++) {
        values[3 + p] = passthrough[p].get(i);
      }
      rows[i] = values;
    }
    if (kind == InferenceKind.LABEL) {
      List<?> labels = block.getValue(inferenceIndex);
      checkWidth(block, width, 1);
      if (labels.size() != n) {
        throw malformed(block, "it has " + labels.size() + " labels for " + n + " keys");
      }
      for (int i = 0; i < n; i++) {
        rows[i][1] = labels.get(i);
      }
    } else {
      byte[] bytes = block.getValue(inferenceIndex);
      if (kind != InferenceKind.VECTOR) {
        checkWidth(block, width, 1);
      } else if (width < 0) {
        throw malformed(block, "its inference_width is " + width);
      }
      long expected = (long) n * width * 8;
      if (bytes.length != expected) {
        throw malformed(block, "its inference has " + bytes.length + " bytes; " + n + " keys x " + width
            + " values x 8 bytes are " + expected);
      }
      ByteBuffer buffer = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
      if (kind == InferenceKind.VECTOR) {
        double[] all = new double[n * width];
        buffer.asDoubleBuffer().get(all);
        for (int i = 0, at = 0; i < n; i++) {
          Double[] vector = new Double[width];
          for (int j = 0; j < width; j++) {
            vector[j] = all[at++];
          }
          rows[i][1] = Arrays.asList(vector);
        }
      } else if (kind == InferenceKind.NUMBER) {
        for (int i = 0; i < n; i++) {
          rows[i][1] = buffer.getDouble(i << 3);
        }
      } else {
        for (int i = 0; i < n; i++) {
          rows[i][1] = buffer.getLong(i << 3);
        }
      }
    }
    for (int i = 0; i < n; i++) {
      out.output(Row.withSchema(outputSchema).attachValues(rows[i]));
    }
  }

  /** A wire key (Long or String) as a value of the input key's type. */
  private Object key(Object key) {
    switch (keyType) {
      case INT32:
        return ((Number) key).intValue();
      case INT16:
        return ((Number) key).shortValue();
      case BYTE:
        return ((Number) key).byteValue();
      default: // INT64 and STRING as they come
        return key;
    }
  }

  private void checkWidth(Row block, int width, int expected) {
    if (width != expected) {
      throw malformed(block, "its inference_width is " + width + ", expected " + expected + " for a "
          + kind.wireName() + " inference");
    }
  }

  private IllegalStateException malformed(Row block, String why) {
    Object modelId = block.getValue(modelIdIndex);
    return new IllegalStateException(
        "Inference: the expansion service at " + endpoint + " returned a malformed result block (model_id "
            + modelId + "): " + why + "; the service and this library are different InferBridge versions");
  }
}
