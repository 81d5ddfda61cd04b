package dev.inferbridge;

import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * A model served by one of the Beam Python ModelHandlers that InferBridge allows, named by
 * {@link #HANDLERS}: {@code sklearn_numpy} (Beam's {@code SklearnModelHandlerNumpy}), {@code
 * xgboost_numpy} ({@code XGBoostModelHandlerNumpy}) and {@code tensorflow_numpy} ({@code
 * TFModelHandlerNumpy}).
 *
 * <p>{@link #withArgument} passes the handler's constructor arguments (JSON values only); the
 * expansion service checks them against the handler's signature. {@link #withOutput} says what
 * the model gives per example: {@link ModelOutput#VECTOR} (the default) or {@link
 * ModelOutput#NUMBER}.
 *
 * <pre>{@code
 * BeamHandlerModel model = BeamHandlerModel.of("xgboost_numpy", "/models/digits.json")
 *     .withArgument("model_class", "XGBClassifier")
 *     .withOutput(ModelOutput.NUMBER);
 * rows.apply(Inference.of(model).withKeyField("id").withFeatureField("pixels")
 *     .withPostprocess(Step.round()));
 * }</pre>
 */
public final class BeamHandlerModel extends Model {
  private static final long serialVersionUID = 1L;
  static final String FRAMEWORK = "handler";

  /** The handlers the InferBridge expansion service allows. */
  public static final List<String> HANDLERS =
      Collections.unmodifiableList(Arrays.asList("sklearn_numpy", "xgboost_numpy", "tensorflow_numpy"));

  private static final List<ModelOutput> OUTPUTS =
      Collections.unmodifiableList(Arrays.asList(ModelOutput.VECTOR, ModelOutput.NUMBER));

  private final Map<String, Object> arguments;

  private BeamHandlerModel(String handler, Settings settings, Map<String, Object> arguments) {
    super(FRAMEWORK, handler, settings);
    this.arguments = arguments;
  }

  /** The model at {@code uri}, served by the Beam handler named {@code handler} (see {@link #HANDLERS}). */
  public static BeamHandlerModel of(String handler, String uri) {
    if (handler == null || !HANDLERS.contains(handler)) {
      throw new IllegalArgumentException(
          "BeamHandlerModel.of(): handler " + quote(handler) + " is not supported; allowed: "
              + String.join(", ", HANDLERS));
    }
    Settings settings = Settings.of("BeamHandlerModel.of()", uri, ModelOutput.VECTOR);
    return new BeamHandlerModel(handler, settings, Collections.<String, Object>emptyMap());
  }

  /**
   * The handler's constructor argument {@code name} (a keyword argument in Python); {@code value}
   * is a JSON value: a string, number, boolean, null, or a list or map of them. Replaces an
   * earlier value of the same argument.
   */
  public BeamHandlerModel withArgument(String name, Object value) {
    return new BeamHandlerModel(getFormat(), settings(), withEntry(method("withArgument"), arguments, name, value));
  }

  /** {@link ModelOutput#VECTOR} (default) or {@link ModelOutput#NUMBER}. */
  @Override
  public BeamHandlerModel withOutput(ModelOutput output) {
    return (BeamHandlerModel) super.withOutput(output);
  }

  @Override
  public BeamHandlerModel withModelId(String modelId) {
    return (BeamHandlerModel) super.withModelId(modelId);
  }

  @Override
  public BeamHandlerModel withKeys(String... keys) {
    return (BeamHandlerModel) super.withKeys(keys);
  }

  @Override
  public BeamHandlerModel withSha256(String sha256) {
    return (BeamHandlerModel) super.withSha256(sha256);
  }

  @Override
  public BeamHandlerModel withWatchPattern(String pattern) {
    return (BeamHandlerModel) super.withWatchPattern(pattern);
  }

  /** The handler's name, e.g. {@code xgboost_numpy}. */
  public String getHandler() {
    return getFormat();
  }

  /** The constructor arguments, by name. */
  public Map<String, Object> getArguments() {
    return arguments;
  }

  @Override
  BeamHandlerModel withSettings(Settings settings) {
    return new BeamHandlerModel(getFormat(), settings, arguments);
  }

  @Override
  List<ModelOutput> allowedOutputs() {
    return OUTPUTS;
  }

  @Override
  Map<String, Object> options() {
    return arguments;
  }

  @Override
  String frameworkName() {
    return "Beam handler";
  }
}
