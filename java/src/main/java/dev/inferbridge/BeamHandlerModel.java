package dev.inferbridge;

import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * A model served by a Beam Python ModelHandler that the expansion service builds: one that
 * InferBridge allows ({@link #of}), named by {@link #HANDLERS}: {@code sklearn_numpy} (Beam's
 * {@code SklearnModelHandlerNumpy}), {@code xgboost_numpy} ({@code XGBoostModelHandlerNumpy}) and
 * {@code tensorflow_numpy} ({@code TFModelHandlerNumpy}); or one that a Python package installed
 * with the service registers under the {@code inferbridge.model_handlers} entry-point group
 * ({@link #registered}): a remote endpoint's client, a framework InferBridge has no builder for,
 * a team's own loading code. The service checks the name and the arguments when the pipeline is
 * built. A registered handler loads (or calls) what the URI names itself, so it takes no {@link
 * #withSha256} or {@link #withWatchPattern}; refresh it with model updates.
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
 *
 * BeamHandlerModel remote = BeamHandlerModel.registered("sentiment", "http://127.0.0.1:8080/v1")
 *     .withArgument("timeout_secs", 10);
 * }</pre>
 */
public final class BeamHandlerModel extends Model {
  private static final long serialVersionUID = 1L;
  static final String FRAMEWORK = "handler";
  static final String REGISTERED = "registered";

  /** The handlers the InferBridge expansion service allows. */
  public static final List<String> HANDLERS =
      Collections.unmodifiableList(Arrays.asList("sklearn_numpy", "xgboost_numpy", "tensorflow_numpy"));

  private static final List<ModelOutput> OUTPUTS =
      Collections.unmodifiableList(Arrays.asList(ModelOutput.VECTOR, ModelOutput.NUMBER));

  private final Map<String, Object> arguments;

  private BeamHandlerModel(String framework, String handler, Settings settings, Map<String, Object> arguments) {
    super(framework, handler, settings);
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
    return new BeamHandlerModel(FRAMEWORK, handler, settings, Collections.<String, Object>emptyMap());
  }

  /**
   * The model at {@code uri}, served by the handler that a package installed with the expansion
   * service registers as {@code handler}: the service calls the registered factory with the URI
   * and the {@link #withArgument arguments}.
   */
  public static BeamHandlerModel registered(String handler, String uri) {
    if (handler == null || handler.trim().isEmpty()) {
      throw new IllegalArgumentException(
          "BeamHandlerModel.registered(): handler must be the non-empty name of a registered handler, got "
              + quote(handler));
    }
    Settings settings = Settings.of("BeamHandlerModel.registered()", uri, ModelOutput.VECTOR);
    return new BeamHandlerModel(REGISTERED, handler, settings, Collections.<String, Object>emptyMap());
  }

  /**
   * The handler's constructor argument {@code name} (a keyword argument in Python); {@code value}
   * is a JSON value: a string, number, boolean, null, or a list or map of them. Replaces an
   * earlier value of the same argument.
   */
  public BeamHandlerModel withArgument(String name, Object value) {
    return new BeamHandlerModel(getFramework(), getFormat(), settings(), withEntry(method("withArgument"), arguments, name, value));
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

  /** The file's digest; refused for a {@link #registered} handler, which loads its model itself. */
  @Override
  public BeamHandlerModel withSha256(String sha256) {
    return (BeamHandlerModel) super.withSha256(sha256);
  }

  /** A pattern of newer files; refused for a {@link #registered} handler (use model updates). */
  @Override
  public BeamHandlerModel withWatchPattern(String pattern) {
    return (BeamHandlerModel) super.withWatchPattern(pattern);
  }

  @Override
  boolean hasFile() {
    return !REGISTERED.equals(getFramework());
  }

  /** The handler's name, e.g. {@code xgboost_numpy}, or the name it is registered under. */
  public String getHandler() {
    return getFormat();
  }

  /** The constructor arguments, by name. */
  public Map<String, Object> getArguments() {
    return arguments;
  }

  @Override
  BeamHandlerModel withSettings(Settings settings) {
    return new BeamHandlerModel(getFramework(), getFormat(), settings, arguments);
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
    return REGISTERED.equals(getFramework()) ? "registered handler" : "Beam handler";
  }
}
