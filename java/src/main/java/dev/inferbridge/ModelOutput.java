package dev.inferbridge;

/**
 * Which method of the model gives the inference, before postprocessing.
 *
 * <pre>{@code
 * SklearnModel.pickle(uri).withOutput(ModelOutput.PREDICT_PROBA) // then e.g. Step.argmax()
 * }</pre>
 */
public enum ModelOutput {
  /** {@code predict}: one number per example (a DOUBLE inference). */
  PREDICT("predict"),
  /** {@code predict_proba}: class probabilities per example (an ARRAY&lt;DOUBLE&gt; inference). */
  PREDICT_PROBA("predict_proba");

  private final String wireName;

  ModelOutput(String wireName) {
    this.wireName = wireName;
  }

  /** The name the inference spec uses. */
  public String wireName() {
    return wireName;
  }
}
