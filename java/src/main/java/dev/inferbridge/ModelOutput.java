package dev.inferbridge;

/**
 * What one example's model result is, before postprocessing. scikit-learn models name the method
 * ({@link #PREDICT}, {@link #PREDICT_PROBA}); PyTorch, ONNX and Beam handler models name the kind
 * of result ({@link #VECTOR}, {@link #NUMBER}).
 *
 * <pre>{@code
 * SklearnModel.pickle(uri).withOutput(ModelOutput.PREDICT_PROBA) // then e.g. Step.argmax()
 * OnnxModel.of(uri).withOutput(ModelOutput.NUMBER)               // a regression
 * }</pre>
 */
public enum ModelOutput {
  /** scikit-learn {@code predict}: one number per example (a DOUBLE inference). */
  PREDICT("predict", InferenceKind.NUMBER),
  /** scikit-learn {@code predict_proba}: class probabilities per example (ARRAY&lt;DOUBLE&gt;). */
  PREDICT_PROBA("predict_proba", InferenceKind.VECTOR),
  /** A vector of numbers per example (PyTorch, ONNX, Beam handlers): ARRAY&lt;DOUBLE&gt;. */
  VECTOR("vector", InferenceKind.VECTOR),
  /** One number per example (PyTorch, ONNX, Beam handlers): DOUBLE. */
  NUMBER("number", InferenceKind.NUMBER);

  private final String wireName;
  private final InferenceKind kind;

  ModelOutput(String wireName, InferenceKind kind) {
    this.wireName = wireName;
    this.kind = kind;
  }

  /** The name the inference spec uses. */
  public String wireName() {
    return wireName;
  }

  /** The kind of one example's result. */
  public InferenceKind kind() {
    return kind;
  }
}
