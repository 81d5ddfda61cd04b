package dev.inferbridge;

import java.io.Serializable;
import java.util.Arrays;
import java.util.Collections;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * A named preprocessing or postprocessing step with typed parameters, run by the Python
 * composite. Steps are referenced by name; no code crosses the language boundary.
 *
 * <pre>{@code
 * Inference.of(SklearnModel.pickle("/models/digits.pkl").withOutput(ModelOutput.PREDICT_PROBA))
 *     .withPreprocess(Step.scale(1.0 / 16))
 *     .withPostprocess(Step.argmax(), Step.labels("zero", "one", "two"));
 * }</pre>
 */
public final class Step implements Serializable {
  private static final long serialVersionUID = 1L;

  private final String name;
  private final Map<String, Object> params;

  private Step(String name, Map<String, Object> params) {
    this.name = name;
    this.params = Collections.unmodifiableMap(new LinkedHashMap<>(params));
  }

  /** Preprocessing: multiplies every feature by {@code factor}. */
  public static Step scale(double factor) {
    return new Step("scale", Collections.singletonMap("factor", finite("scale", "factor", factor)));
  }

  /** Preprocessing: {@code (x - mean) / std} for every feature. */
  public static Step normalize(double mean, double std) {
    if (std == 0) {
      throw new IllegalArgumentException("Step.normalize(): std must not be 0");
    }
    Map<String, Object> params = new LinkedHashMap<>();
    params.put("mean", finite("normalize", "mean", mean));
    params.put("std", finite("normalize", "std", std));
    return new Step("normalize", params);
  }

  /** Postprocessing: the index of the largest value of a vector (an INT64 inference). */
  public static Step argmax() {
    return new Step("argmax", Collections.emptyMap());
  }

  /** Postprocessing: turns a vector of scores into probabilities. */
  public static Step softmax() {
    return new Step("softmax", Collections.emptyMap());
  }

  /** Postprocessing: rounds a number to the nearest integer (an INT64 inference). */
  public static Step round() {
    return new Step("round", Collections.emptyMap());
  }

  /** Postprocessing: maps an integer index to {@code names[index]} (a STRING inference). */
  public static Step labels(String... names) {
    if (names == null || names.length == 0) {
      throw new IllegalArgumentException("Step.labels() needs at least one name");
    }
    for (String n : names) {
      Objects.requireNonNull(n, "Step.labels(): names must not contain null");
    }
    return new Step(
        "labels", Collections.singletonMap("names", Collections.unmodifiableList(Arrays.asList(names.clone()))));
  }

  /**
   * Any step registered with the Python composite, by name. Parameter values may be numbers,
   * strings, booleans or lists of those.
   */
  public static Step named(String name, Map<String, ?> params) {
    if (name == null || name.trim().isEmpty()) {
      throw new IllegalArgumentException("Step.named(): name must be a non-empty string, got " + name);
    }
    for (Map.Entry<String, ?> e : params.entrySet()) {
      checkJsonValue(name, e.getKey(), e.getValue());
    }
    return new Step(name, new LinkedHashMap<>(params));
  }

  public String getName() {
    return name;
  }

  public Map<String, Object> getParams() {
    return params;
  }

  /** The parameters as a JSON object, the form the inference spec carries them in. */
  String paramsJson() {
    StringBuilder out = new StringBuilder();
    writeJson(out, params);
    return out.toString();
  }

  private static double finite(String step, String param, double value) {
    if (Double.isNaN(value) || Double.isInfinite(value)) {
      throw new IllegalArgumentException(
          "Step." + step + "(): " + param + " must be a finite number, got " + value);
    }
    return value;
  }

  private static void checkJsonValue(String step, String param, Object value) {
    if (value instanceof List) {
      for (Object v : (List<?>) value) {
        checkJsonValue(step, param, v);
      }
    } else if (!(value instanceof String || value instanceof Number || value instanceof Boolean)) {
      throw new IllegalArgumentException(
          "Step.named(\"" + step + "\"): parameter '" + param + "' has unsupported value " + value
              + "; allowed: numbers, strings, booleans and lists of them");
    }
  }

  private static void writeJson(StringBuilder out, Object value) {
    if (value instanceof Map) {
      out.append('{');
      Iterator<? extends Map.Entry<?, ?>> it = ((Map<?, ?>) value).entrySet().iterator();
      while (it.hasNext()) {
        Map.Entry<?, ?> e = it.next();
        writeJson(out, String.valueOf(e.getKey()));
        out.append(':');
        writeJson(out, e.getValue());
        if (it.hasNext()) {
          out.append(',');
        }
      }
      out.append('}');
    } else if (value instanceof List) {
      out.append('[');
      Iterator<?> it = ((List<?>) value).iterator();
      while (it.hasNext()) {
        writeJson(out, it.next());
        if (it.hasNext()) {
          out.append(',');
        }
      }
      out.append(']');
    } else if (value instanceof String) {
      out.append('"');
      for (char c : ((String) value).toCharArray()) {
        if (c == '"' || c == '\\') {
          out.append('\\').append(c);
        } else if (c < 0x20) {
          out.append(String.format("\\u%04x", (int) c));
        } else {
          out.append(c);
        }
      }
      out.append('"');
    } else {
      // Numbers and booleans print as JSON literals; Double.toString round-trips exactly.
      out.append(value);
    }
  }

  @Override
  public boolean equals(Object o) {
    return o instanceof Step && name.equals(((Step) o).name) && params.equals(((Step) o).params);
  }

  @Override
  public int hashCode() {
    return Objects.hash(name, params);
  }

  @Override
  public String toString() {
    return name + paramsJson();
  }
}
