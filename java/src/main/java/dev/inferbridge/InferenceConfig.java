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

  static final Schema STEP_SCHEMA =
      Schema.builder().addStringField("name").addStringField("params").build();

  static final Schema SCHEMA =
      Schema.builder()
          .addStringField("key_field")
          .addStringField("feature_field")
          .addStringField("model_framework")
          .addStringField("model_format")
          .addStringField("model_uri")
          .addNullableField("model_id", FieldType.STRING)
          .addStringField("model_output")
          .addArrayField("preprocess", FieldType.row(STEP_SCHEMA))
          .addArrayField("postprocess", FieldType.row(STEP_SCHEMA))
          .build();

  private InferenceConfig() {}

  static Row toRow(
      Model model, String keyField, String featureField, List<Step> preprocess, List<Step> postprocess) {
    return Row.withSchema(SCHEMA)
        .withFieldValue("key_field", keyField)
        .withFieldValue("feature_field", featureField)
        .withFieldValue("model_framework", model.getFramework())
        .withFieldValue("model_format", model.getFormat())
        .withFieldValue("model_uri", model.getUri())
        .withFieldValue("model_id", model.getModelId())
        .withFieldValue("model_output", model.getOutput().wireName())
        .withFieldValue("preprocess", stepRows(preprocess))
        .withFieldValue("postprocess", stepRows(postprocess))
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

  private static List<Row> stepRows(List<Step> steps) {
    List<Row> rows = new ArrayList<>();
    for (Step step : steps) {
      rows.add(Row.withSchema(STEP_SCHEMA).addValues(step.getName(), step.paramsJson()).build());
    }
    return rows;
  }
}
