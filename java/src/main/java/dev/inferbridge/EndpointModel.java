package dev.inferbridge;

import java.time.Duration;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * A model behind an HTTP endpoint: each batch is one POST of {@code {"instances": [[...], ...]}}
 * to the URL, answered by {@code {"predictions": [...]}}, one per instance (the request and
 * response of TensorFlow Serving, KServe v1 and Vertex AI endpoints).
 *
 * <p>The Python workers call it through Beam's {@code RemoteModelHandler}: a call that may
 * succeed later (a connection error, a timeout, HTTP 408, 429 or 5xx) is retried with exponential
 * backoff, and repeated failures make the client throttle itself; any other answer fails the
 * rows of the call at stage {@code inference}. The expansion service calls only URLs under its
 * {@code --allow-endpoint} prefixes.
 *
 * <pre>{@code
 * EndpointModel model = EndpointModel.of("https://models.internal/v1/models/digits:predict")
 *     .withTimeout(Duration.ofSeconds(10))
 *     .withBearerTokenEnv("INFERBRIDGE_ENDPOINT_TOKEN_DIGITS")
 *     .withOutput(ModelOutput.VECTOR);
 * }</pre>
 */
public final class EndpointModel extends Model {
  private static final long serialVersionUID = 1L;
  static final String FRAMEWORK = "endpoint";
  private static final List<ModelOutput> OUTPUTS =
      Collections.unmodifiableList(Arrays.asList(ModelOutput.VECTOR, ModelOutput.NUMBER));
  private static final Duration LONGEST = Duration.ofHours(1);

  private final Map<String, Object> options;

  private EndpointModel(Settings settings, Map<String, Object> options) {
    super(FRAMEWORK, "http_json", settings);
    this.options = options;
  }

  /** The model answering at {@code url} (http or https). */
  public static EndpointModel of(String url) {
    return new EndpointModel(
        Settings.of("EndpointModel.of()", url, ModelOutput.VECTOR), Collections.<String, Object>emptyMap());
  }

  /** How long one call may take (default 30 s; more than zero, at most an hour). */
  public EndpointModel withTimeout(Duration timeout) {
    return with("withTimeout", "timeout_secs", seconds("withTimeout", timeout));
  }

  /** Retries of a call that may succeed later (default 3; at most 20). */
  public EndpointModel withRetries(int retries) {
    if (retries < 0 || retries > 20) {
      throw new IllegalArgumentException(method("withRetries") + ": " + retries + " is out of range; allowed: 0 to 20");
    }
    return with("withRetries", "num_retries", retries);
  }

  /**
   * How long a call waits when the client throttles itself, in whole seconds (default 5 s; at
   * most an hour): throttled time is counted in whole seconds ({@code cumulativeThrottlingSeconds}).
   */
  public EndpointModel withThrottleDelay(Duration delay) {
    double seconds = seconds("withThrottleDelay", delay);
    if (seconds != Math.rint(seconds)) {
      throw new IllegalArgumentException(
          method("withThrottleDelay") + ": " + delay + " is not whole seconds; allowed: 0 to 3600 whole seconds");
    }
    return with("withThrottleDelay", "throttle_delay_secs", (long) seconds);
  }

  /**
   * The environment variable of the Python workers that holds a token, sent as {@code
   * Authorization: Bearer <token>}: one named {@code INFERBRIDGE_ENDPOINT_TOKEN_<NAME>}, so that
   * a pipeline can read no other variable of the workers. The token never travels in the pipeline.
   */
  public EndpointModel withBearerTokenEnv(String name) {
    if (name == null || !name.matches("INFERBRIDGE_ENDPOINT_TOKEN_[A-Z0-9_]+")) {
      throw new IllegalArgumentException(
          method("withBearerTokenEnv") + ": " + quote(name) + " is not allowed; allowed: names "
              + "INFERBRIDGE_ENDPOINT_TOKEN_<NAME> (capitals, digits, '_')");
    }
    return with("withBearerTokenEnv", "bearer_token_env", name);
  }

  private double seconds(String calling, Duration duration) {
    if (duration == null || duration.isNegative() || duration.compareTo(LONGEST) > 0
        || ("withTimeout".equals(calling) && duration.isZero())) {
      throw new IllegalArgumentException(
          method(calling) + ": " + duration + " is out of range; allowed: 0 to 1 hour");
    }
    return duration.toMillis() / 1000.0;
  }

  private EndpointModel with(String calling, String name, Object value) {
    return new EndpointModel(settings(), withEntry(method(calling), options, name, value));
  }

  /** {@link ModelOutput#VECTOR} (default) or {@link ModelOutput#NUMBER}. */
  @Override
  public EndpointModel withOutput(ModelOutput output) {
    return (EndpointModel) super.withOutput(output);
  }

  @Override
  public EndpointModel withModelId(String modelId) {
    return (EndpointModel) super.withModelId(modelId);
  }

  @Override
  public EndpointModel withKeys(String... keys) {
    return (EndpointModel) super.withKeys(keys);
  }

  @Override
  EndpointModel withSettings(Settings settings) {
    return new EndpointModel(settings, options);
  }

  @Override
  boolean hasFile() {
    return false;
  }

  @Override
  List<ModelOutput> allowedOutputs() {
    return OUTPUTS;
  }

  @Override
  Map<String, Object> options() {
    return options;
  }

  @Override
  String frameworkName() {
    return "endpoint";
  }
}
