package dev.inferbridge;

import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.transforms.PTransform;
import org.apache.beam.sdk.util.construction.External;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;

/**
 * Classification quality inside the pipeline, per window and model id, by InferBridge's Python
 * {@code Evaluate} composite: compare two models of an A/B run without leaving the pipeline.
 *
 * <p>The input Rows carry a prediction ({@code inference} by default), a label and a model id
 * ({@code model_id}), e.g. {@link InferenceResult#getInferences()} with the label passed through.
 * Predictions and labels are compared as classes by their string form ({@code 3} and {@code 3.0}
 * are the same class). The output has {@link #OUTPUT_SCHEMA}: one Row per window and model id.
 *
 * <pre>{@code
 * PCollection<Row> quality =
 *     result.getInferences().apply(Evaluate.of("label").withExpansionService("localhost:8097"));
 * // Rows of {model_id, count, correct, accuracy, classes, precision, recall, ..., confusion}
 * }</pre>
 *
 * <p>The expansion service is found as for {@link Inference}, and reached with the same kind of
 * credentials ({@link #withServiceCredentials}, else those of the environment).
 */
public final class Evaluate extends PTransform<PCollection<Row>, PCollection<Row>> {
  private static final long serialVersionUID = 1L;

  static final String EVALUATE_URN = "beam:transform:inferbridge:evaluate:v1";

  /** The configuration Row; recorded in {@code tests/golden/evaluate_v1.schema}. */
  static final Schema CONFIG_SCHEMA =
      Schema.builder()
          .addStringField("label_field")
          .addStringField("prediction_field")
          .addStringField("model_id_field")
          .build();

  static final Schema CONFUSION_CELL_SCHEMA =
      Schema.builder().addStringField("actual").addStringField("predicted").addInt64Field("count").build();

  /**
   * The output: per model id, {@code count} labelled rows, {@code correct} ones, {@code accuracy},
   * every {@code classes} seen (sorted) with per-class {@code precision} and {@code recall} (0 when
   * undefined), their macro averages, the non-zero {@code confusion} cells, and {@code unlabeled}
   * rows (null label or prediction: counted, not dropped).
   */
  public static final Schema OUTPUT_SCHEMA =
      Schema.builder()
          .addNullableField("model_id", FieldType.STRING)
          .addInt64Field("count")
          .addInt64Field("correct")
          .addDoubleField("accuracy")
          .addArrayField("classes", FieldType.STRING)
          .addArrayField("precision", FieldType.DOUBLE)
          .addArrayField("recall", FieldType.DOUBLE)
          .addDoubleField("macro_precision")
          .addDoubleField("macro_recall")
          .addArrayField("confusion", FieldType.row(CONFUSION_CELL_SCHEMA))
          .addInt64Field("unlabeled")
          .build();

  private final String labelField;
  private final String predictionField;
  private final String modelIdField;
  private final String expansionService;
  private final PythonEnvironment localPython;
  private final transient ServiceCredentials serviceCredentials;

  private Evaluate(
      String labelField,
      String predictionField,
      String modelIdField,
      String expansionService,
      PythonEnvironment localPython,
      ServiceCredentials serviceCredentials) {
    this.labelField = labelField;
    this.predictionField = predictionField;
    this.modelIdField = modelIdField;
    this.expansionService = expansionService;
    this.localPython = localPython;
    this.serviceCredentials = serviceCredentials;
  }

  /** Evaluates the {@code inference} field against {@code labelField}, per {@code model_id}. */
  public static Evaluate of(String labelField) {
    return new Evaluate(requireName("of", labelField), "inference", "model_id", null, null, null);
  }

  /** The field holding the prediction (default {@code inference}). */
  public Evaluate withPredictionField(String field) {
    return new Evaluate(
        labelField, requireName("withPredictionField", field), modelIdField, expansionService, localPython,
        serviceCredentials);
  }

  /** The field naming the model (default {@code model_id}). */
  public Evaluate withModelIdField(String field) {
    return new Evaluate(
        labelField, predictionField, requireName("withModelIdField", field), expansionService, localPython,
        serviceCredentials);
  }

  /**
   * The {@code host:port} of a running InferBridge expansion service. Takes precedence over
   * {@link #withLocalExpansionService} and the environment variables; the order is that of
   * {@link Inference}: this address, {@link #withLocalExpansionService}, {@value
   * Inference#EXPANSION_SERVICE_ENV}, {@value PythonEnvironment#PYTHON_ENV}.
   */
  public Evaluate withExpansionService(String address) {
    requireName("withExpansionService", address);
    if (!ExpansionService.isAddress(address)) {
      throw new IllegalArgumentException(
          "Evaluate.withExpansionService(): expected host:port, e.g. localhost:8097, got \"" + address + "\"");
    }
    return new Evaluate(labelField, predictionField, modelIdField, address, localPython, serviceCredentials);
  }

  /**
   * Expands through an InferBridge expansion service that this JVM starts from {@code python}, or
   * the one it already runs for an equal environment (e.g. the one an {@link
   * Inference#withLocalExpansionService} of the same pipeline started); it runs until the JVM
   * exits. See {@link PythonEnvironment#startExpansionService()}.
   */
  public Evaluate withLocalExpansionService(PythonEnvironment python) {
    if (python == null) {
      throw new IllegalArgumentException(
          "Evaluate.withLocalExpansionService(): python must not be null; use e.g. "
              + "PythonEnvironment.virtualenv(\"/path/to/venv\")");
    }
    return new Evaluate(labelField, predictionField, modelIdField, expansionService, python, serviceCredentials);
  }

  /**
   * How to authenticate to the expansion service and check its identity: a bearer token, TLS, or
   * both; see {@link ServiceCredentials} and {@link Inference#withServiceCredentials}. Without
   * this, the environment gives them ({@link ServiceCredentials#fromEnvironment()}).
   */
  public Evaluate withServiceCredentials(ServiceCredentials credentials) {
    if (credentials == null) {
      throw new IllegalArgumentException(
          "Evaluate.withServiceCredentials(): credentials must not be null; use e.g. "
              + "ServiceCredentials.token(token), ServiceCredentials.tls(\"/path/to/ca.pem\") or ServiceCredentials.none()");
    }
    return new Evaluate(labelField, predictionField, modelIdField, expansionService, localPython, credentials);
  }

  Row config() {
    return Row.withSchema(CONFIG_SCHEMA).addValues(labelField, predictionField, modelIdField).build();
  }

  @Override
  public PCollection<Row> expand(PCollection<Row> input) {
    if (!input.hasSchema()) {
      throw new IllegalArgumentException(
          "Evaluate: the input PCollection has no schema; give it one, e.g. with setRowSchema()");
    }
    Schema schema = input.getSchema();
    String[][] fields = {
      {"of", labelField}, {"withPredictionField", predictionField}, {"withModelIdField", modelIdField}
    };
    for (String[] field : fields) {
      if (!schema.hasField(field[1])) {
        throw new IllegalArgumentException(
            "Evaluate." + field[0] + "(\"" + field[1] + "\"): no such field in the input; fields: "
                + schema.getFieldNames());
      }
    }
    ServiceCredentials credentials =
        ExpansionService.credentials("Evaluate", expansionService, localPython, serviceCredentials);
    String endpoint = ExpansionService.resolve("Evaluate", expansionService, localPython);
    byte[] payload = InferenceConfig.payload(config());
    SecureExpansionServiceClientFactory secure =
        credentials.isNone() ? null : new SecureExpansionServiceClientFactory("Evaluate", credentials);
    PCollection<Row> output;
    try {
      output =
          input.apply(
              "Evaluate",
              secure == null
                  ? External.<PCollection<Row>, Row>of(EVALUATE_URN, payload, endpoint)
                  : External.<PCollection<Row>, Row>of(EVALUATE_URN, payload, endpoint, secure));
    } catch (RuntimeException e) {
      throw ExpansionErrors.explain("Evaluate", endpoint, credentials, e);
    } finally {
      if (secure != null) {
        secure.close();
      }
    }
    if (!output.hasSchema() || !output.getSchema().equivalent(OUTPUT_SCHEMA)) {
      throw new IllegalStateException(
          "Evaluate: the expansion service at " + endpoint + " returned Rows of schema "
              + (output.hasSchema() ? output.getSchema() : "none") + ", expected " + OUTPUT_SCHEMA
              + "; the service and this library are different InferBridge versions");
    }
    return output;
  }

  private static String requireName(String method, String value) {
    if (value == null || value.trim().isEmpty()) {
      throw new IllegalArgumentException("Evaluate." + method + "(): must be a non-empty name, got " + (value == null ? "null" : "\"" + value + "\""));
    }
    return value;
  }
}
