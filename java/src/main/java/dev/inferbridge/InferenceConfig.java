package dev.inferbridge;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.ObjectInputStream;
import java.io.ObjectOutputStream;
import java.io.Serializable;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.Function;
import org.apache.beam.model.pipeline.v1.ExternalTransforms.ExternalConfigurationPayload;
import org.apache.beam.sdk.coders.RowCoder;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.Field;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.schemas.SchemaTranslation;
import org.apache.beam.sdk.util.construction.ExpansionServiceClientFactory;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.vendor.grpc.v1p69p0.com.google.protobuf.ByteString;
import org.joda.time.Duration;

/**
 * The settings of an {@link Inference} as one immutable value, and their wire form: the
 * configuration Row sent to the expansion service.
 *
 * <p>Each setting is declared once below. Those with a wire type are the fields of the
 * configuration Row, in declaration order: {@link #SCHEMA} and {@link #toRow()} are derived from
 * the declarations. The schema is the cross-language contract, recorded in {@code tests/golden/};
 * Python derives the same Row from the fields of {@code InferenceSpec}. A new option is one
 * declaration here and one {@code withX} method on {@link Inference}.
 */
final class InferenceConfig implements Serializable {
  private static final long serialVersionUID = 1L;

  static final String RUN_INFERENCE_URN = "beam:transform:inferbridge:run_inference:v1";

  /**
   * The packed-blocks form of the same composite ({@link Inference#withBlockSize}): the same
   * configuration Row; blocks of Rows in and out ({@link Blocks}).
   */
  static final String RUN_INFERENCE_BLOCKS_URN = "beam:transform:inferbridge:run_inference_blocks:v1";

  static final String DEFAULT_METRICS_NAMESPACE = "InferBridge";

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

  /** One setting: a field of the configuration Row, or (without a wire type) of the Java transform only. */
  static final class Setting<T> {
    final int index;
    final String name;
    /** The type of the Row field; null for a setting that is not sent. */
    final FieldType wireType;
    final T defaultValue;
    /** The Row field's value for a non-null setting. */
    private final Function<? super T, ?> toWire;
    /** False for values that are not serialized with the transform (a PCollection, a gRPC client). */
    final boolean serialized;

    private Setting(String name, FieldType wireType, T defaultValue, Function<? super T, ?> toWire, boolean serialized) {
      this.index = SETTINGS.size();
      this.name = name;
      this.wireType = wireType;
      this.defaultValue = defaultValue;
      this.toWire = toWire;
      this.serialized = serialized;
      SETTINGS.add(this);
    }

    Object wireValue(T value) {
      return value == null ? null : toWire.apply(value);
    }
  }

  // Declared before the settings, which add themselves to it.
  private static final List<Setting<?>> SETTINGS = new ArrayList<>();

  // The fields of the configuration Row, in order; a nullable type means the setting is optional.
  static final Setting<String> KEY_FIELD = wire("key_field", FieldType.STRING, null);
  static final Setting<List<String>> FEATURE_FIELDS = wire("feature_fields", FieldType.array(FieldType.STRING), null);
  static final Setting<List<String>> PASSTHROUGH_FIELDS =
      wire("passthrough_fields", FieldType.array(FieldType.STRING), Collections.<String>emptyList());
  static final Setting<List<Model>> MODELS =
      wire("models", FieldType.array(FieldType.row(MODEL_SCHEMA)), null, InferenceConfig::modelRows);
  static final Setting<List<Step>> PREPROCESS =
      wire("preprocess", FieldType.array(FieldType.row(STEP_SCHEMA)), Collections.<Step>emptyList(), InferenceConfig::stepRows);
  static final Setting<List<Step>> POSTPROCESS =
      wire("postprocess", FieldType.array(FieldType.row(STEP_SCHEMA)), Collections.<Step>emptyList(), InferenceConfig::stepRows);
  static final Setting<Long> MIN_BATCH_SIZE = wire("min_batch_size", FieldType.INT64.withNullable(true), null);
  static final Setting<Long> MAX_BATCH_SIZE = wire("max_batch_size", FieldType.INT64.withNullable(true), null);
  static final Setting<Duration> MAX_BATCH_DURATION =
      wire("max_batch_duration_secs", FieldType.DOUBLE.withNullable(true), null, InferenceConfig::seconds);
  static final Setting<VariableLength> VARIABLE_LENGTH =
      wire("variable_length", FieldType.STRING, VariableLength.BUCKET, VariableLength::wireName);
  static final Setting<Double> PAD_VALUE = wire("pad_value", FieldType.DOUBLE, 0.0);
  static final Setting<Long> MAX_MODELS_PER_WORKER = wire("max_models_per_worker", FieldType.INT64.withNullable(true), null);
  static final Setting<Duration> WATCH_INTERVAL =
      wire("watch_interval_secs", FieldType.DOUBLE, Duration.standardSeconds(360), InferenceConfig::seconds);
  static final Setting<String> MIN_RAM = wire("min_ram", FieldType.STRING.withNullable(true), null);
  static final Setting<String> ACCELERATOR = wire("accelerator", FieldType.STRING.withNullable(true), null);
  static final Setting<String> METRICS_NAMESPACE = wire("metrics_namespace", FieldType.STRING, DEFAULT_METRICS_NAMESPACE);

  // Settings of the Java transform only.
  /** The method that named the feature fields, for error messages. */
  static final Setting<String> FEATURE_METHOD = local("feature_method", true);
  static final Setting<Integer> BLOCK_SIZE = local("block_size", true);
  static final Setting<PCollection<Row>> MODEL_UPDATES = local("model_updates", false);
  static final Setting<String> EXPANSION_SERVICE = local("expansion_service", true);
  static final Setting<PythonEnvironment> LOCAL_PYTHON = local("local_python", true);
  static final Setting<ServiceCredentials> SERVICE_CREDENTIALS = local("service_credentials", false);
  static final Setting<ExpansionServiceClientFactory> EXPANSION_CLIENT = local("expansion_client", false);

  /** The schema of the configuration Row: the wire settings, in declaration order. */
  static final Schema SCHEMA = wireSchema();

  /** Every setting at its default. */
  static final InferenceConfig DEFAULTS = defaults();

  // One value per setting, by Setting.index; replaced by readObject, otherwise never changed.
  private transient Object[] values;

  private InferenceConfig(Object[] values) {
    this.values = values;
  }

  private static <T> Setting<T> wire(String name, FieldType type, T defaultValue) {
    return wire(name, type, defaultValue, value -> value);
  }

  private static <T> Setting<T> wire(String name, FieldType type, T defaultValue, Function<? super T, ?> toWire) {
    return new Setting<>(name, type, defaultValue, toWire, true);
  }

  private static <T> Setting<T> local(String name, boolean serialized) {
    return new Setting<>(name, null, null, value -> value, serialized);
  }

  private static Schema wireSchema() {
    Schema.Builder schema = Schema.builder();
    for (Setting<?> setting : SETTINGS) {
      if (setting.wireType != null) {
        schema.addField(Field.of(setting.name, setting.wireType));
      }
    }
    return schema.build();
  }

  private static InferenceConfig defaults() {
    Object[] values = new Object[SETTINGS.size()];
    for (Setting<?> setting : SETTINGS) {
      values[setting.index] = setting.defaultValue;
    }
    return new InferenceConfig(values);
  }

  @SuppressWarnings("unchecked")
  <T> T get(Setting<T> setting) {
    return (T) values[setting.index];
  }

  /** This configuration with {@code setting} set to {@code value}. */
  <T> InferenceConfig with(Setting<T> setting, T value) {
    Object[] changed = values.clone();
    changed[setting.index] = value;
    return new InferenceConfig(changed);
  }

  /** The configuration Row: the wire settings, in declaration order. */
  Row toRow() {
    Map<String, Object> fields = new LinkedHashMap<>();
    for (Setting<?> setting : SETTINGS) {
      if (setting.wireType != null) {
        fields.put(setting.name, wireValue(setting));
      }
    }
    return Row.withSchema(SCHEMA).withFieldValues(fields).build();
  }

  private <T> Object wireValue(Setting<T> setting) {
    return setting.wireValue(get(setting));
  }

  /** The configuration Row of {@code inference}. */
  static Row toRow(Inference inference) {
    return inference.config().toRow();
  }

  private void writeObject(ObjectOutputStream out) throws IOException {
    out.defaultWriteObject();
    Object[] kept = new Object[values.length];
    for (Setting<?> setting : SETTINGS) {
      if (setting.serialized) {
        kept[setting.index] = values[setting.index];
      }
    }
    out.writeObject(kept);
  }

  private void readObject(ObjectInputStream in) throws IOException, ClassNotFoundException {
    in.defaultReadObject();
    values = (Object[]) in.readObject();
  }

  private static Double seconds(Duration duration) {
    return duration.getMillis() / 1000.0;
  }

  private static List<Row> modelRows(List<Model> models) {
    List<Row> rows = new ArrayList<>();
    for (Model model : models) {
      rows.add(modelRow(model));
    }
    return rows;
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
