package dev.inferbridge;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.List;
import org.apache.beam.model.pipeline.v1.ExternalTransforms.ExternalConfigurationPayload;
import org.apache.beam.sdk.coders.RowCoder;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.Field;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.schemas.SchemaTranslation;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.vendor.grpc.v1p69p0.com.google.protobuf.ByteString;

/**
 * The wire form of an {@link Inference}: the configuration Row sent to the expansion service.
 * Its schema is the cross-language contract, recorded in {@code tests/golden/}.
 */
final class InferenceConfig {
  static final String RUN_INFERENCE_URN = "beam:transform:inferbridge:run_inference:v1";

  /**
   * The packed-blocks form of the same composite ({@link Inference#withBlockSize}): the same
   * configuration Row; blocks of Rows in and out ({@link Blocks}).
   */
  static final String RUN_INFERENCE_BLOCKS_URN = "beam:transform:inferbridge:run_inference_blocks:v1";

  static final Schema STEP_SCHEMA =
      Schema.builder().addStringField("name").addStringField("params").build();

  static final Schema MODEL_SCHEMA =
      Schema.builder()
          .addNullableField("model_id", FieldType.STRING)
          .addStringField("framework")
          .addStringField("format")
          .addStringField("uri")
          .addStringField("output")
          .addArrayField("keys", FieldType.STRING)
          .addStringField("options")
          .addNullableField("sha256", FieldType.STRING)
          .addNullableField("watch_pattern", FieldType.STRING)
          .build();

  static final Schema SCHEMA =
      Schema.builder()
          .addStringField("key_field")
          .addArrayField("feature_fields", FieldType.STRING)
          .addArrayField("passthrough_fields", FieldType.STRING)
          .addArrayField("models", FieldType.row(MODEL_SCHEMA))
          .addArrayField("preprocess", FieldType.row(STEP_SCHEMA))
          .addArrayField("postprocess", FieldType.row(STEP_SCHEMA))
          .addNullableField("min_batch_size", FieldType.INT64)
          .addNullableField("max_batch_size", FieldType.INT64)
          .addNullableField("max_batch_duration_secs", FieldType.DOUBLE)
          .addStringField("variable_length")
          .addDoubleField("pad_value")
          .addNullableField("max_models_per_worker", FieldType.INT64)
          .addDoubleField("watch_interval_secs")
          .addNullableField("min_ram", FieldType.STRING)
          .addNullableField("accelerator", FieldType.STRING)
          .addStringField("metrics_namespace")
          .build();

  private InferenceConfig() {}

  /** The configuration Row of {@code inference}. */
  static Row toRow(Inference inference) {
    List<Row> models = new ArrayList<>();
    for (Model model : inference.models()) {
      models.add(modelRow(model));
    }
    return Row.withSchema(SCHEMA)
        .withFieldValue("key_field", inference.keyField())
        .withFieldValue("feature_fields", inference.featureFields())
        .withFieldValue("passthrough_fields", inference.passthroughFields())
        .withFieldValue("models", models)
        .withFieldValue("preprocess", stepRows(inference.preprocess()))
        .withFieldValue("postprocess", stepRows(inference.postprocess()))
        .withFieldValue("min_batch_size", inference.minBatchSize())
        .withFieldValue("max_batch_size", inference.maxBatchSize())
        .withFieldValue("max_batch_duration_secs", inference.maxBatchDurationSecs())
        .withFieldValue("variable_length", inference.variableLength().wireName())
        .withFieldValue("pad_value", inference.padValue())
        .withFieldValue("max_models_per_worker", inference.maxModelsPerWorker())
        .withFieldValue("watch_interval_secs", inference.watchIntervalSecs())
        .withFieldValue("min_ram", inference.minRam())
        .withFieldValue("accelerator", inference.accelerator())
        .withFieldValue("metrics_namespace", inference.metricsNamespace())
        .build();
  }

  /** The serialized {@code ExternalConfigurationPayload} carrying {@code config}. */
  static byte[] payload(Row config) {
    ByteArrayOutputStream bytes = new ByteArrayOutputStream();
    try {
      RowCoder.of(config.getSchema()).encode(config, bytes);
    } catch (IOException e) {
      throw new UncheckedIOException("could not encode the inference configuration", e);
    }
    return ExternalConfigurationPayload.newBuilder()
        .setSchema(SchemaTranslation.schemaToProto(config.getSchema(), true))
        .setPayload(ByteString.copyFrom(bytes.toByteArray()))
        .build()
        .toByteArray();
  }

  /** The schema as {@code name: TYPE} lines, the form of the golden file. */
  static List<String> describe(Schema schema) {
    List<String> lines = new ArrayList<>();
    for (Field field : schema.getFields()) {
      lines.add(field.getName() + ": " + describe(field.getType()));
    }
    return lines;
  }

  private static String describe(FieldType type) {
    String text;
    switch (type.getTypeName()) {
      case ARRAY:
        text = "ARRAY<" + describe(type.getCollectionElementType()) + ">";
        break;
      case ROW:
        text = "ROW<" + String.join(", ", describe(type.getRowSchema())) + ">";
        break;
      default:
        text = type.getTypeName().name();
    }
    return Boolean.TRUE.equals(type.getNullable()) ? text + " NULLABLE" : text;
  }

  private static Row modelRow(Model model) {
    return Row.withSchema(MODEL_SCHEMA)
        .withFieldValue("model_id", model.getModelId())
        .withFieldValue("framework", model.getFramework())
        .withFieldValue("format", model.getFormat())
        .withFieldValue("uri", model.getUri())
        .withFieldValue("output", model.getOutput().wireName())
        .withFieldValue("keys", model.getKeys())
        .withFieldValue("options", model.optionsJson())
        .withFieldValue("sha256", model.getSha256())
        .withFieldValue("watch_pattern", model.getWatchPattern())
        .build();
  }

  private static List<Row> stepRows(List<Step> steps) {
    List<Row> rows = new ArrayList<>();
    for (Step step : steps) {
      rows.add(Row.withSchema(STEP_SCHEMA).addValues(step.getName(), step.paramsJson()).build());
    }
    return rows;
  }
}
