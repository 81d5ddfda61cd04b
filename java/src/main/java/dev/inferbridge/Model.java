package dev.inferbridge;

import java.io.Serializable;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.TreeMap;
import java.util.regex.Pattern;

/**
 * A model for {@link Inference}: where it is, how the Python workers load and call it, what it
 * gives per example, and which element keys it serves. Create one with a framework's factory:
 * {@link SklearnModel}, {@link PytorchModel}, {@link OnnxModel} or {@link BeamHandlerModel}.
 *
 * <p>Every model takes, besides its framework's settings:
 *
 * <ul>
 *   <li>{@link #withModelId}: the {@code model_id} reported with its inferences (default: the URI);
 *   <li>{@link #withKeys}: the element keys it serves, by their string form; a model without keys
 *       serves every key that no other model lists;
 *   <li>{@link #withSha256}: the SHA-256 digest its file must have;
 *   <li>{@link #withWatchPattern}: a file pattern whose newest match replaces the model while a
 *       streaming pipeline runs (see {@link Inference#withWatchInterval}).
 * </ul>
 *
 * <pre>{@code
 * Model a = SklearnModel.joblib("/models/digits-a.joblib")
 *     .withOutput(ModelOutput.PREDICT_PROBA)
 *     .withModelId("a")
 *     .withKeys("a", "canary");
 * Model b = OnnxModel.of("/models/digits-b.onnx").withModelId("b"); // every other key
 * rows.apply(Inference.of(a, b).withKeyField("variant").withFeatureField("pixels"));
 * }</pre>
 *
 * <p>Models are immutable: each {@code withX} method returns a new model. The URI must be
 * readable by the expansion service and the Python workers.
 */
public abstract class Model implements Serializable {
  private static final long serialVersionUID = 1L;
  private static final Pattern SHA256 = Pattern.compile("[0-9a-fA-F]{64}");

  private final String framework;
  private final String format;
  private final Settings settings;

  Model(String framework, String format, Settings settings) {
    this.framework = framework;
    this.format = format;
    this.settings = settings;
  }

  /** The settings every framework shares; immutable. */
  static final class Settings implements Serializable {
    private static final long serialVersionUID = 1L;

    final String uri;
    final ModelOutput output;
    final String modelId;
    final List<String> keys;
    final String sha256;
    final String watchPattern;

    Settings(String uri, ModelOutput output, String modelId, List<String> keys, String sha256, String watchPattern) {
      this.uri = uri;
      this.output = output;
      this.modelId = modelId;
      this.keys = keys;
      this.sha256 = sha256;
      this.watchPattern = watchPattern;
    }

    static Settings of(String factory, String uri, ModelOutput output) {
      if (uri == null || uri.trim().isEmpty()) {
        throw new IllegalArgumentException(
            factory + ": uri must be a non-empty path or URI, got " + Model.quote(uri));
      }
      return new Settings(uri, output, null, Collections.<String>emptyList(), null, null);
    }

    Settings output(ModelOutput value) {
      return new Settings(uri, value, modelId, keys, sha256, watchPattern);
    }

    Settings modelId(String value) {
      return new Settings(uri, output, value, keys, sha256, watchPattern);
    }

    Settings keys(List<String> value) {
      return new Settings(uri, output, modelId, value, sha256, watchPattern);
    }

    Settings sha256(String value) {
      return new Settings(uri, output, modelId, keys, value, watchPattern);
    }

    Settings watchPattern(String value) {
      return new Settings(uri, output, modelId, keys, sha256, value);
    }

    private List<Object> values() {
      return Arrays.<Object>asList(uri, output, modelId, keys, sha256, watchPattern);
    }
  }

  /** This model with other shared settings; subclasses keep their own. */
  abstract Model withSettings(Settings settings);

  /** The outputs this framework's models may give, the first being the default. */
  abstract List<ModelOutput> allowedOutputs();

  /** The framework's options as a JSON object, the form the model's {@code options} field has. */
  abstract Map<String, Object> options();

  /**
   * What one example's result is before postprocessing; each framework's factory documents its
   * default and the values it allows.
   */
  public Model withOutput(ModelOutput output) {
    List<ModelOutput> allowed = allowedOutputs();
    if (output == null || !allowed.contains(output)) {
      throw new IllegalArgumentException(
          method("withOutput") + ": " + output + " is not an output of " + frameworkName()
              + " models; allowed: " + names(allowed));
    }
    return withSettings(settings.output(output));
  }

  /** The {@code model_id} reported with each inference and named in model updates; default: the URI. */
  public Model withModelId(String modelId) {
    if (modelId == null || modelId.trim().isEmpty()) {
      throw new IllegalArgumentException(
          method("withModelId") + ": modelId must be a non-empty string, got " + quote(modelId));
    }
    return withSettings(settings.modelId(modelId));
  }

  /**
   * The element keys this model serves, matched by the string form of the key field (an INT64 key
   * 7 is {@code "7"}). Replaces earlier keys; with none, the model is the default model, which
   * serves every key no other model lists.
   */
  public Model withKeys(String... keys) {
    if (keys == null) {
      throw new IllegalArgumentException(method("withKeys") + ": keys must not be null");
    }
    Set<String> distinct = new LinkedHashSet<>();
    for (String key : keys) {
      if (key == null || key.isEmpty()) {
        throw new IllegalArgumentException(
            method("withKeys") + ": keys must be non-empty strings, got " + quote(key));
      }
      if (!distinct.add(key)) {
        throw new IllegalArgumentException(
            method("withKeys") + ": key " + quote(key) + " is given twice; give each key once");
      }
    }
    return withSettings(settings.keys(Collections.unmodifiableList(new ArrayList<>(distinct))));
  }

  /**
   * The SHA-256 digest (64 hexadecimal digits) the model file must have; a file with another
   * digest is not loaded. Cannot be combined with {@link #withWatchPattern}.
   */
  public Model withSha256(String sha256) {
    refuseWithoutFile("withSha256");
    if (sha256 == null || !SHA256.matcher(sha256).matches()) {
      throw new IllegalArgumentException(
          method("withSha256") + ": " + quote(sha256) + " is not a SHA-256 digest; allowed: 64 "
              + "hexadecimal digits");
    }
    checkPinAndPattern("withSha256", sha256, settings.watchPattern);
    return withSettings(settings.sha256(sha256));
  }

  /**
   * A file pattern (e.g. {@code /models/digits-*.pkl}) whose newest match (by modification time)
   * replaces this model while the pipeline runs: each worker checks it every {@link
   * Inference#withWatchInterval}, with no side input, so this works on every runner, Flink
   * included. Cannot be combined with {@link #withSha256}.
   */
  public Model withWatchPattern(String pattern) {
    refuseWithoutFile("withWatchPattern");
    if (pattern == null || pattern.trim().isEmpty()) {
      throw new IllegalArgumentException(
          method("withWatchPattern") + ": pattern must be a non-empty file pattern, got "
              + quote(pattern));
    }
    checkPinAndPattern("withWatchPattern", settings.sha256, pattern);
    return withSettings(settings.watchPattern(pattern));
  }

  /**
   * Whether the service opens this model's file; false when its handler loads (or calls) what
   * the URI names itself, so there is no file to pin or watch.
   */
  boolean hasFile() {
    return true;
  }

  private void refuseWithoutFile(String calling) {
    if (!hasFile()) {
      throw new IllegalArgumentException(
          method(calling) + ": this " + frameworkName() + " model is loaded (or called) by its handler, "
              + "so there is no file to pin or watch; refresh it with model updates "
              + "(Inference.withModelUpdates)");
    }
  }

  private void checkPinAndPattern(String calling, String sha256, String pattern) {
    if (sha256 != null && pattern != null) {
      throw new IllegalArgumentException(
          method(calling) + ": withSha256() and withWatchPattern() cannot be combined: every "
              + "refreshed file would need the pinned digest; remove one of them");
    }
  }

  /** The framework's name in the inference spec: sklearn, pytorch, onnx, handler, registered or endpoint. */
  public String getFramework() {
    return framework;
  }

  /** The file format (or, for a Beam handler or registered model, the handler's name). */
  public String getFormat() {
    return format;
  }

  /** Where the model file is. */
  public String getUri() {
    return settings.uri;
  }

  /** What one example's result is before postprocessing. */
  public ModelOutput getOutput() {
    return settings.output;
  }

  /** The explicit model id, or null when the URI is used. */
  public String getModelId() {
    return settings.modelId;
  }

  /** The keys this model serves; empty for the default model. */
  public List<String> getKeys() {
    return settings.keys;
  }

  /** The pinned SHA-256 digest, or null. */
  public String getSha256() {
    return settings.sha256;
  }

  /** The watched file pattern, or null. */
  public String getWatchPattern() {
    return settings.watchPattern;
  }

  /** The id reported with each inference: the model id, else the URI. */
  String id() {
    return settings.modelId != null ? settings.modelId : settings.uri;
  }

  Settings settings() {
    return settings;
  }

  /** The options as the JSON text of the model's {@code options} field. */
  String optionsJson() {
    return Json.write(options());
  }

  /** E.g. {@code SklearnModel.withOutput()}, for error messages. */
  String method(String name) {
    return getClass().getSimpleName() + "." + name + "()";
  }

  /** The framework as people name it, for error messages. */
  abstract String frameworkName();

  /**
   * {@code arguments} with {@code name} set to {@code value}, a JSON value (a string, number,
   * boolean, null, or a list or map of them); {@code method} names the caller in errors.
   */
  static Map<String, Object> withEntry(String method, Map<String, Object> arguments, String name, Object value) {
    if (name == null || name.trim().isEmpty()) {
      throw new IllegalArgumentException(method + ": name must be a non-empty string, got " + quote(name));
    }
    Map<String, Object> updated = new TreeMap<>(arguments);
    updated.put(name, Json.value(method.replace("()", "(\"" + name + "\")"), value));
    return Collections.unmodifiableMap(updated);
  }

  static String quote(String value) {
    return value == null ? "null" : "\"" + value + "\"";
  }

  static String names(List<? extends Enum<?>> values) {
    List<String> names = new ArrayList<>();
    for (Enum<?> value : values) {
      names.add(value.name());
    }
    return String.join(", ", names);
  }

  @Override
  public boolean equals(Object o) {
    if (o == null || o.getClass() != getClass()) {
      return false;
    }
    Model m = (Model) o;
    return framework.equals(m.framework) && format.equals(m.format)
        && settings.values().equals(m.settings.values()) && options().equals(m.options());
  }

  @Override
  public int hashCode() {
    return Objects.hash(getClass(), framework, format, settings.values(), options());
  }

  @Override
  public String toString() {
    return getClass().getSimpleName() + "{format=" + format + ", uri=" + settings.uri + ", output="
        + settings.output + (settings.modelId != null ? ", modelId=" + settings.modelId : "")
        + (settings.keys.isEmpty() ? "" : ", keys=" + settings.keys)
        + (settings.sha256 != null ? ", sha256=" + settings.sha256 : "")
        + (settings.watchPattern != null ? ", watchPattern=" + settings.watchPattern : "")
        + ", options=" + optionsJson() + "}";
  }
}
