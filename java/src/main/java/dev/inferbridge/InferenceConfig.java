package dev.inferbridge;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.Collections;
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

  // The composite's defaults for the settings this library does not expose yet.
  private static final String VARIABLE_LENGTH = "bucket";
  private static final double PAD_VALUE = 0.0;
  private static final double WATCH_INTERVAL_SECS = 360.0;
  private static final String METRICS_NAMESPACE = "InferBridge";

  private InferenceConfig() {}

  /** The configuration Row: {@code model} serves every key; other settings are the defaults. */
  static Row toRow(
      Model model, String keyField, String featureField, List<Step> preprocess, List<Step> postprocess) {
    return Row.withSchema(SCHEMA)
        .withFieldValue("key_field", keyField)
        .withFieldValue("feature_fields", Collections.singletonList(featureField))
        .withFieldValue("passthrough_fields", Collections.emptyList())
        .withFieldValue("models", Collections.singletonList(modelRow(model)))
        .withFieldValue("preprocess", stepRows(preprocess))
        .withFieldValue("postprocess", stepRows(postprocess))
        .withFieldValue("min_batch_size", null)
        .withFieldValue("max_batch_size", null)
        .withFieldValue("max_batch_duration_secs", null)
        .withFieldValue("variable_length", VARIABLE_LENGTH)
        .withFieldValue("pad_value", PAD_VALUE)
        .withFieldValue("max_models_per_worker", null)
        .withFieldValue("watch_interval_secs", WATCH_INTERVAL_SECS)
        .withFieldValue("min_ram", null)
        .withFieldValue("accelerator", null)
        .withFieldValue("metrics_namespace", METRICS_NAMESPACE)
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
        .withFieldValue("keys", Collections.emptyList())
        .withFieldValue("options", "{}")
        .withFieldValue("sha256", null)
        .withFieldValue("watch_pattern", null)
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
