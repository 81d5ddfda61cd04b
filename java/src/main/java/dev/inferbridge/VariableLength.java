package dev.inferbridge;

/**
 * How examples of different shapes in one batch reach the model.
 *
 * <pre>{@code
 * Inference.of(model).withVariableLength(VariableLength.PAD, 0.0) // pad to the longest example
 * }</pre>
 */
public enum VariableLength {
  /** One model call per shape (the default). */
  BUCKET("bucket"),
  /** Pads every example's last axis to the longest in the batch with a pad value. */
  PAD("pad");

  private final String wireName;

  VariableLength(String wireName) {
    this.wireName = wireName;
  }

  /** The name the inference spec uses. */
  public String wireName() {
    return wireName;
  }
}
