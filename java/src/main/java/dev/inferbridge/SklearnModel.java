package dev.inferbridge;

/**
 * Factories for scikit-learn models saved with {@code pickle} or {@code joblib}.
 *
 * <pre>{@code
 * rows.apply(Inference.of(SklearnModel.pickle("/models/digits.pkl"))
 *     .withKeyField("id").withFeatureField("pixels"));
 * }</pre>
 *
 * <p>The URI must be readable by the expansion service and by the Python workers.
 */
public final class SklearnModel {
  static final String FRAMEWORK = "sklearn";

  private SklearnModel() {}

  /** A model saved with {@code pickle.dump}. */
  public static Model pickle(String uri) {
    return create("pickle", uri);
  }

  /** A model saved with {@code joblib.dump}. */
  public static Model joblib(String uri) {
    return create("joblib", uri);
  }

  private static Model create(String format, String uri) {
    if (uri == null || uri.trim().isEmpty()) {
      throw new IllegalArgumentException(
          "SklearnModel." + format + "(): uri must be a non-empty path or URI, got " + uri);
    }
    return new Model(FRAMEWORK, format, uri, ModelOutput.PREDICT, null);
  }
}
