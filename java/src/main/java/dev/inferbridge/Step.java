package dev.inferbridge;

import java.io.Serializable;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * A named preprocessing or postprocessing step with its parameters, run by the Python composite.
 * Steps are referenced by name; no code crosses the language boundary.
 *
 * <p>Preprocessing steps ({@link Inference#withPreprocess}) turn each example's features into
 * model input: {@link #scale}, {@link #normalize}, {@link #reshape}, {@link #cast}, {@link #pad},
 * {@link #truncate}. Postprocessing steps ({@link Inference#withPostprocess}) turn the model's
 * result into the inference and decide its type ({@link InferenceKind}): {@link #argmax}, {@link
 * #softmax}, {@link #topK}, {@link #scores}, {@link #threshold}, {@link #round}, {@link #labels},
 * {@link #labelMap}. Both run in the order given.
 *
 * <pre>{@code
 * Inference.of(SklearnModel.pickle("/models/digits.pkl").withOutput(ModelOutput.PREDICT_PROBA))
 *     .withPreprocess(Step.scale(1.0 / 16))
 *     .withPostprocess(Step.argmax(), Step.labels("zero", "one", "two"));
 * }</pre>
 *
 * <p>Steps that Python packages register under the {@code inferbridge.steps} entry point are
 * named with {@link #named}; a postprocessing one declares what it produces with {@link
 * #producing}. The built-in steps, their parameters and kinds come from the step catalog shared
 * with Python ({@code tests/golden/steps_v1.json}); their parameters are checked when the step is
 * made.
 */
public final class Step implements Serializable {
  private static final long serialVersionUID = 1L;

  /** The element types {@link #cast} converts to. */
  public enum Dtype {
    /** numpy {@code float32}. */
    FLOAT32,
    /** numpy {@code float64}. */
    FLOAT64,
    /** numpy {@code int32}. */
    INT32,
    /** numpy {@code int64}. */
    INT64;

    /** The numpy name, e.g. {@code float32}. */
    public String wireName() {
      return name().toLowerCase(java.util.Locale.ROOT);
    }
  }

  private final String name;
  private final Map<String, Object> params;
  private final InferenceKind producing;

  private Step(String name, Map<String, Object> params, InferenceKind producing) {
    this.name = name;
    this.params = params;
    this.producing = producing;
  }

  /** Preprocessing: multiplies every feature by {@code factor}. */
  public static Step scale(double factor) {
    return builtIn("Step.scale()", "scale", "factor", factor);
  }

  /** Preprocessing: {@code (x - mean) / std} for every feature. */
  public static Step normalize(double mean, double std) {
    return builtIn("Step.normalize()", "normalize", "mean", mean, "std", std);
  }

  /** Preprocessing: {@code (x - mean[i]) / std[i]} for feature {@code i} (the last axis). */
  public static Step normalize(double[] mean, double[] std) {
    return builtIn("Step.normalize()", "normalize", "mean", mean, "std", std);
  }

  /** Preprocessing: reshapes each example to {@code shape}; one dimension may be -1. */
  public static Step reshape(int... shape) {
    return builtIn("Step.reshape()", "reshape", "shape", shape);
  }

  /** Preprocessing: converts the features to {@code dtype}. */
  public static Step cast(Dtype dtype) {
    return builtIn("Step.cast()", "cast", "dtype", dtype == null ? null : dtype.wireName());
  }

  /** Preprocessing: pads the last axis with zeros to at least {@code length} (never cuts). */
  public static Step pad(int length) {
    return builtIn("Step.pad()", "pad", "length", length);
  }

  /** Preprocessing: pads the last axis with {@code value} to at least {@code length}. */
  public static Step pad(int length, double value) {
    return builtIn("Step.pad()", "pad", "length", length, "value", value);
  }

  /** Preprocessing: keeps the first {@code length} values of the last axis. */
  public static Step truncate(int length) {
    return builtIn("Step.truncate()", "truncate", "length", length);
  }

  /** Postprocessing: the index of the largest value of a vector (an INT64 inference). */
  public static Step argmax() {
    return builtIn("Step.argmax()", "argmax");
  }

  /** Postprocessing: turns a vector of scores into probabilities (a vector). */
  public static Step softmax() {
    return builtIn("Step.softmax()", "softmax");
  }

  /**
   * Postprocessing: the {@code k} largest values of a vector by their index as a string (a
   * MAP&lt;STRING, DOUBLE&gt; inference).
   */
  public static Step topK(int k) {
    return builtIn("Step.topK()", "top_k", "k", k);
  }

  /**
   * Postprocessing: the {@code k} largest values of a vector by {@code names[index]} (a
   * MAP&lt;STRING, DOUBLE&gt; inference).
   */
  public static Step topK(int k, String... names) {
    return builtIn("Step.topK()", "top_k", "k", k, "names", names);
  }

  /** Postprocessing: every value of a vector by {@code names[index]} (a MAP&lt;STRING, DOUBLE&gt;). */
  public static Step scores(String... names) {
    return builtIn("Step.scores()", "scores", "names", names);
  }

  /** Postprocessing: 1 if a number is at least {@code value}, else 0 (an INT64 inference). */
  public static Step threshold(double value) {
    return builtIn("Step.threshold()", "threshold", "value", value);
  }

  /** Postprocessing: rounds a number to the nearest integer, halves to even (an INT64 inference). */
  public static Step round() {
    return builtIn("Step.round()", "round");
  }

  /** Postprocessing: maps an integer index to {@code names[index]} (a STRING inference). */
  public static Step labels(String... names) {
    return builtIn("Step.labels()", "labels", "names", names);
  }

  /**
   * Postprocessing: maps an integer or a label, by its string form, to {@code mapping}'s value (a
   * STRING inference).
   */
  public static Step labelMap(Map<String, String> mapping) {
    return builtIn("Step.labelMap()", "label_map", "mapping", mapping);
  }

  /**
   * A step by name: a built-in one (its parameters are checked as by its factory), or one that a
   * Python package registers under the {@code inferbridge.steps} entry point, which the expansion
   * service checks. Parameter values are JSON values: strings, numbers, booleans, null, and lists
   * (or arrays) and maps of them. A postprocessing step that is not built in must declare what it
   * produces with {@link #producing} when it is the last step.
   *
   * <pre>{@code
   * Step clip = Step.named("clip", ImmutableMap.of("low", 0, "high", 1));
   * Step label = Step.named("digit_name", Collections.emptyMap()).producing(InferenceKind.LABEL);
   * }</pre>
   */
  public static Step named(String name, Map<String, ?> params) {
    if (name == null || name.trim().isEmpty()) {
      throw new IllegalArgumentException("Step.named(): name must be a non-empty string, got " + Model.quote(name));
    }
    String where = "Step.named(\"" + name + "\")";
    if (params == null) {
      throw new IllegalArgumentException(where + ": params must not be null; pass an empty map for none");
    }
    Map<String, Object> checked = Json.object(where + ": params", params);
    StepCatalog.Definition definition = StepCatalog.lookup(name);
    if (definition != null) {
      StepCatalog.checkParams(where, definition, checked);
    }
    return new Step(name, checked, null);
  }

  /**
   * This step, declaring the kind of inference it produces; for postprocessing steps registered
   * by Python packages (the built-in steps' kinds are known). The declaration must match the
   * step's Python definition, or the expansion service returns another output schema.
   */
  public Step producing(InferenceKind kind) {
    if (kind == null) {
      throw new IllegalArgumentException(
          "Step.producing(): kind must not be null; allowed: " + Model.names(Arrays.asList(InferenceKind.values())));
    }
    StepCatalog.Definition definition = StepCatalog.lookup(name);
    if (definition != null) {
      throw new IllegalArgumentException(
          "Step.producing(" + kind + "): '" + name + "' is a built-in " + definition.stage + " step"
              + (definition.produces != null ? ", which produces " + definition.produces : "")
              + "; producing() is for steps registered by Python packages");
    }
    return new Step(name, params, kind);
  }

  /** The registered name, e.g. {@code top_k}. */
  public String getName() {
    return name;
  }

  /** The parameters, as JSON values. */
  public Map<String, Object> getParams() {
    return params;
  }

  /** The declared kind of a step registered by a Python package, or null. */
  public InferenceKind getProducing() {
    return producing;
  }

  /** The parameters as a JSON object, the form the inference spec carries them in. */
  String paramsJson() {
    return Json.write(params);
  }

  /** A built-in step from its factory: {@code nameValuePairs} are its parameters. */
  private static Step builtIn(String where, String name, Object... nameValuePairs) {
    StepCatalog.Definition definition = StepCatalog.lookup(name);
    if (definition == null) {
      throw new IllegalStateException(
          where + ": the step catalog has no step '" + name + "'; this library and its "
              + StepCatalog.RESOURCE + " are different InferBridge versions");
    }
    Map<String, Object> params = new LinkedHashMap<>();
    for (int i = 0; i < nameValuePairs.length; i += 2) {
      String param = (String) nameValuePairs[i];
      params.put(param, Json.value(where + ": parameter '" + param + "'", nameValuePairs[i + 1]));
    }
    StepCatalog.checkParams(where, definition, params);
    return new Step(name, Collections.unmodifiableMap(params), null);
  }

  @Override
  public boolean equals(Object o) {
    if (!(o instanceof Step)) {
      return false;
    }
    Step s = (Step) o;
    return name.equals(s.name) && params.equals(s.params) && producing == s.producing;
  }

  @Override
  public int hashCode() {
    return Objects.hash(name, params, producing);
  }

  @Override
  public String toString() {
    return name + paramsJson() + (producing != null ? " producing " + producing : "");
  }

  static List<Step> list(String method, Step... steps) {
    if (steps == null) {
      throw new IllegalArgumentException(method + ": steps must not be null");
    }
    List<Step> list = new ArrayList<>();
    for (int i = 0; i < steps.length; i++) {
      if (steps[i] == null) {
        throw new IllegalArgumentException(method + ": steps[" + i + "] is null");
      }
      list.add(steps[i]);
    }
    return Collections.unmodifiableList(list);
  }
}
