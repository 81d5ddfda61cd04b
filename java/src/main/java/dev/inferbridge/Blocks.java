package dev.inferbridge;

import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.schemas.Schema.TypeName;

/**
 * The wire form of the packed-blocks path ({@link Inference#withBlockSize}): many input Rows
 * travel to Python as one block Row of column arrays, and come back as one block Row per model.
 *
 * <p>A block to Python ({@link #inputSchema}): {@code key} ARRAY&lt;INT64&gt; (integer keys,
 * widened) or ARRAY&lt;STRING&gt;; {@code features} BYTES, the rows' feature vectors as float64
 * little-endian, row-major ({@code len(key) * feature_count * 8} bytes); {@code feature_count}
 * INT32; then each passthrough field as ARRAY&lt;its type, nullable&gt;.
 *
 * <p>A block from Python ({@link #resultSchema}): {@code key} as above; {@code inference}, typed by
 * the inference kind (VECTOR: BYTES float64 LE row-major, rows x {@code inference_width}; NUMBER:
 * BYTES float64 LE; INTEGER: BYTES int64 LE; LABEL: ARRAY&lt;STRING&gt;); {@code inference_width}
 * INT32 (1 except for VECTOR); {@code model_id} STRING; then the passthrough arrays.
 */
final class Blocks {
  static final String KEY = "key";
  static final String FEATURES = "features";
  static final String FEATURE_COUNT = "feature_count";
  static final String INFERENCE = "inference";
  static final String INFERENCE_WIDTH = "inference_width";
  static final String MODEL_ID = "model_id";

  /** The largest {@link Inference#withBlockSize} allowed. */
  static final int MAX_ROWS_PER_BLOCK = 1_000_000;

  /** The fields of the block Rows, both ways; passthrough fields may not reuse them. */
  static final List<String> FIELDS =
      Collections.unmodifiableList(
          Arrays.asList(KEY, FEATURES, FEATURE_COUNT, INFERENCE, INFERENCE_WIDTH, MODEL_ID));

  private Blocks() {}

  /** Whether the kind of inference can travel in a block. */
  static boolean supports(InferenceKind kind) {
    return kind == InferenceKind.VECTOR
        || kind == InferenceKind.NUMBER
        || kind == InferenceKind.INTEGER
        || kind == InferenceKind.LABEL;
  }

  /** Whether the key field of {@code input} is a STRING (else an integer, widened to INT64). */
  static boolean stringKeys(Schema input, String keyField) {
    return input.getField(keyField).getType().getTypeName() == TypeName.STRING;
  }

  /** The schema of the blocks sent to Python. */
  static Schema inputSchema(Schema input, String keyField, List<String> passthroughFields) {
    Schema.Builder schema =
        Schema.builder()
            .addField(KEY, keysType(input, keyField))
            .addField(FEATURES, FieldType.BYTES)
            .addField(FEATURE_COUNT, FieldType.INT32);
    return addPassthrough(schema, input, passthroughFields);
  }

  /** The schema of the blocks Python sends back. */
  static Schema resultSchema(
      Schema input, String keyField, InferenceKind kind, List<String> passthroughFields) {
    Schema.Builder schema =
        Schema.builder()
            .addField(KEY, keysType(input, keyField))
            .addField(INFERENCE, kind == InferenceKind.LABEL ? FieldType.array(FieldType.STRING) : FieldType.BYTES)
            .addField(INFERENCE_WIDTH, FieldType.INT32)
            .addField(MODEL_ID, FieldType.STRING);
    return addPassthrough(schema, input, passthroughFields);
  }

  /**
   * The schema of the unpacked inference Rows: {@code key} (the input key's type, never null),
   * {@code inference} ({@link InferenceKind#fieldType()}), {@code model_id}, then the passthrough
   * fields with their input types. No {@code example}.
   */
  static Schema unpackedSchema(
      Schema input, String keyField, InferenceKind kind, List<String> passthroughFields) {
    Schema.Builder schema =
        Schema.builder()
            .addField(KEY, input.getField(keyField).getType().withNullable(false))
            .addField(INFERENCE, kind.fieldType())
            .addStringField(MODEL_ID);
    for (String field : passthroughFields) {
      schema.addField(field, input.getField(field).getType());
    }
    return schema.build();
  }

  /** {@code type} as the messages write it, e.g. {@code MAP<STRING, DOUBLE>}. */
  static String describe(FieldType type) {
    switch (type.getTypeName()) {
      case ARRAY:
      case ITERABLE:
        return type.getTypeName() + "<" + describe(type.getCollectionElementType()) + ">";
      case MAP:
        return "MAP<" + describe(type.getMapKeyType()) + ", " + describe(type.getMapValueType()) + ">";
      default:
        return type.getTypeName().toString();
    }
  }

  private static FieldType keysType(Schema input, String keyField) {
    return FieldType.array(stringKeys(input, keyField) ? FieldType.STRING : FieldType.INT64);
  }

  private static Schema addPassthrough(Schema.Builder schema, Schema input, List<String> passthroughFields) {
    for (String field : passthroughFields) {
      schema.addField(field, FieldType.array(input.getField(field).getType().withNullable(true)));
    }
    return schema.build();
  }
}
