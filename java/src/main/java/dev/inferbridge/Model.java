package dev.inferbridge;

import java.io.Serializable;
import java.util.Objects;

/**
 * A model for {@link Inference}: its framework, file format, location and output. Create one with
 * a framework's factory, e.g. {@link SklearnModel#pickle(String)}.
 *
 * <pre>{@code
 * Model model = SklearnModel.joblib("/models/digits.joblib")
 *     .withOutput(ModelOutput.PREDICT_PROBA)
 *     .withModelId("digits-v1");
 * }</pre>
 */
public final class Model implements Serializable {
  private static final long serialVersionUID = 1L;

  private final String framework;
  private final String format;
  private final String uri;
  private final ModelOutput output;
  private final String modelId;

  Model(String framework, String format, String uri, ModelOutput output, String modelId) {
    this.framework = framework;
    this.format = format;
    this.uri = uri;
    this.output = output;
    this.modelId = modelId;
  }

  /** The method whose result becomes the inference; {@link ModelOutput#PREDICT} by default. */
  public Model withOutput(ModelOutput output) {
    if (output == null) {
      throw new IllegalArgumentException("withOutput(): output must not be null; allowed: PREDICT, PREDICT_PROBA");
    }
    return new Model(framework, format, uri, output, modelId);
  }

  /** The {@code model_id} reported with each inference; the model URI by default. */
  public Model withModelId(String modelId) {
    if (modelId == null || modelId.trim().isEmpty()) {
      throw new IllegalArgumentException("withModelId(): modelId must be a non-empty string, got " + modelId);
    }
    return new Model(framework, format, uri, output, modelId);
  }

  public String getFramework() {
    return framework;
  }

  public String getFormat() {
    return format;
  }

  public String getUri() {
    return uri;
  }

  public ModelOutput getOutput() {
    return output;
  }

  /** The explicit model id, or null when the URI is used. */
  public String getModelId() {
    return modelId;
  }

  @Override
  public boolean equals(Object o) {
    if (!(o instanceof Model)) {
      return false;
    }
    Model m = (Model) o;
    return framework.equals(m.framework) && format.equals(m.format) && uri.equals(m.uri)
        && output == m.output && Objects.equals(modelId, m.modelId);
  }

  @Override
  public int hashCode() {
    return Objects.hash(framework, format, uri, output, modelId);
  }

  @Override
  public String toString() {
    return framework + "/" + format + " model at " + uri;
  }
}
