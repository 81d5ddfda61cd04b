package dev.inferbridge;

import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * A model served by a handler that a Python package installed with the expansion service
 * registers under the {@code inferbridge.model_handlers} entry-point group: the service calls the
 * registered factory with the model's URI and the {@link #withArgument arguments}, and serves the
 * Beam ModelHandler it returns (a remote endpoint's client, a framework InferBridge has no
 * builder for, a team's own loading code).
 *
 * <p>The service checks the name and the arguments when the pipeline is built, against the
 * factory's signature. The handler loads (or calls) what the URI names itself, so it takes no
 * {@link #withSha256} or {@link #withWatchPattern}; refresh it with model updates.
 *
 * <pre>{@code
 * RegisteredModel model = RegisteredModel.of("sentiment", "http://127.0.0.1:8080/v1/models/sentiment")
 *     .withArgument("timeout_secs", 10)
 *     .withOutput(ModelOutput.NUMBER);
 * rows.apply(Inference.of(model).withKeyField("id").withFeatureField("embedding"));
 * }</pre>
 */
public final class RegisteredModel extends Model {
  private static final long serialVersionUID = 1L;
  static final String FRAMEWORK = "registered";

  private static final List<ModelOutput> OUTPUTS =
      Collections.unmodifiableList(Arrays.asList(ModelOutput.VECTOR, ModelOutput.NUMBER));

  private final Map<String, Object> arguments;

  private RegisteredModel(String handler, Settings settings, Map<String, Object> arguments) {
    super(FRAMEWORK, handler, settings);
    this.arguments = arguments;
  }

  /** The model at {@code uri}, served by the handler registered as {@code handler}. */
  public static RegisteredModel of(String handler, String uri) {
    if (handler == null || handler.trim().isEmpty()) {
      throw new IllegalArgumentException(
          "RegisteredModel.of(): handler must be the non-empty name of a registered handler, got "
              + quote(handler));
    }
    Settings settings = Settings.of("RegisteredModel.of()", uri, ModelOutput.VECTOR);
    return new RegisteredModel(handler, settings, Collections.<String, Object>emptyMap());
  }

  /**
   * The registered factory's keyword argument {@code name}; {@code value} is a JSON value: a
   * string, number, boolean, null, or a list or map of them. Replaces an earlier value.
   */
  public RegisteredModel withArgument(String name, Object value) {
    return new RegisteredModel(getFormat(), settings(), withEntry(method("withArgument"), arguments, name, value));
  }

  /** {@link ModelOutput#VECTOR} (default) or {@link ModelOutput#NUMBER}. */
  @Override
  public RegisteredModel withOutput(ModelOutput output) {
    return (RegisteredModel) super.withOutput(output);
  }

  @Override
  public RegisteredModel withModelId(String modelId) {
    return (RegisteredModel) super.withModelId(modelId);
  }

  @Override
  public RegisteredModel withKeys(String... keys) {
    return (RegisteredModel) super.withKeys(keys);
  }

  /** Refused: a registered handler loads its model itself, so there is no file to pin. */
  @Override
  public RegisteredModel withSha256(String sha256) {
    throw new IllegalArgumentException(method("withSha256") + ": " + LOADS_ITSELF);
  }

  /** Refused: a registered handler loads its model itself; refresh it with model updates. */
  @Override
  public RegisteredModel withWatchPattern(String pattern) {
    throw new IllegalArgumentException(method("withWatchPattern") + ": " + LOADS_ITSELF);
  }

  private static final String LOADS_ITSELF =
      "a registered handler loads its model itself, so there is no file to pin or watch; refresh "
          + "it with model updates (Inference.withModelUpdates)";

  /** The registered handler's name. */
  public String getHandler() {
    return getFormat();
  }

  /** The factory's arguments, by name. */
  public Map<String, Object> getArguments() {
    return arguments;
  }

  @Override
  RegisteredModel withSettings(Settings settings) {
    return new RegisteredModel(getFormat(), settings, arguments);
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
    return "registered handler";
  }
}
