package dev.inferbridge;

import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * A scikit-learn model saved with {@code pickle}, {@code joblib} or {@code skops}.
 *
 * <p>{@link #withOutput} picks the method: {@link ModelOutput#PREDICT} (the default; one number
 * per example) or {@link ModelOutput#PREDICT_PROBA} (class probabilities, a vector).
 *
 * <pre>{@code
 * rows.apply(Inference.of(SklearnModel.pickle("/models/digits.pkl").withOutput(ModelOutput.PREDICT_PROBA))
 *     .withKeyField("id").withFeatureField("pixels").withPostprocess(Step.argmax()));
 * }</pre>
 *
 * <p>Pickle and joblib files run code when loaded, so the expansion service loads them only from
 * its trusted model roots; skops files are refused if they hold types skops does not trust.
 */
public final class SklearnModel extends Model {
  private static final long serialVersionUID = 1L;
  static final String FRAMEWORK = "sklearn";
  private static final List<ModelOutput> OUTPUTS =
      Collections.unmodifiableList(Arrays.asList(ModelOutput.PREDICT, ModelOutput.PREDICT_PROBA));

  private SklearnModel(String format, Settings settings) {
    super(FRAMEWORK, format, settings);
  }

  /** A model saved with {@code pickle.dump}. */
  public static SklearnModel pickle(String uri) {
    return create("pickle", uri);
  }

  /** A model saved with {@code joblib.dump}. */
  public static SklearnModel joblib(String uri) {
    return create("joblib", uri);
  }

  /** A model saved with {@code skops.io.dump}. */
  public static SklearnModel skops(String uri) {
    return create("skops", uri);
  }

  private static SklearnModel create(String format, String uri) {
    return new SklearnModel(format, Settings.of("SklearnModel." + format + "()", uri, ModelOutput.PREDICT));
  }

  /** {@link ModelOutput#PREDICT} (default) or {@link ModelOutput#PREDICT_PROBA}. */
  @Override
  public SklearnModel withOutput(ModelOutput output) {
    return (SklearnModel) super.withOutput(output);
  }

  @Override
  public SklearnModel withModelId(String modelId) {
    return (SklearnModel) super.withModelId(modelId);
  }

  @Override
  public SklearnModel withKeys(String... keys) {
    return (SklearnModel) super.withKeys(keys);
  }

  @Override
  public SklearnModel withSha256(String sha256) {
    return (SklearnModel) super.withSha256(sha256);
  }

  @Override
  public SklearnModel withWatchPattern(String pattern) {
    return (SklearnModel) super.withWatchPattern(pattern);
  }

  @Override
  SklearnModel withSettings(Settings settings) {
    return new SklearnModel(getFormat(), settings);
  }

  @Override
  List<ModelOutput> allowedOutputs() {
    return OUTPUTS;
  }

  @Override
  Map<String, Object> options() {
    return Collections.emptyMap();
  }

  @Override
  String frameworkName() {
    return "scikit-learn";
  }
}
