package dev.inferbridge;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.EnumSet;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;

/**
 * The built-in steps, read from {@code steps_v1.json}: the catalog the Python composite writes
 * ({@code inferbridge.steps.catalog_description()}), recorded in {@code tests/golden/} and packaged
 * with this library. It gives each step's stage and parameters (checked when a {@link Step} is
 * made) and, for postprocessing, the kinds it accepts and produces (which type the inference).
 */
final class StepCatalog {
  /** The catalog's classpath resource, next to this class. */
  static final String RESOURCE = "steps_v1.json";

  static final String PREPROCESS = "preprocess";
  static final String POSTPROCESS = "postprocess";

  private static final Map<String, String> DESCRIPTIONS = new LinkedHashMap<>();

  static {
    DESCRIPTIONS.put("number", "a number");
    DESCRIPTIONS.put("positive_int", "a positive integer");
    DESCRIPTIONS.put("numbers", "a finite number or a non-empty list of finite numbers");
    DESCRIPTIONS.put("string_list", "a non-empty list of strings");
    DESCRIPTIONS.put("string_map", "a non-empty map of strings to strings");
    DESCRIPTIONS.put("shape", "a non-empty list of positive integers with at most one -1");
  }

  private StepCatalog() {}

  /** One parameter of a built-in step. */
  static final class Param {
    final String name;
    final String kind;
    final boolean required;
    final Object defaultValue;
    final List<String> choices;

    Param(String name, String kind, boolean required, Object defaultValue, List<String> choices) {
      this.name = name;
      this.kind = kind;
      this.required = required;
      this.defaultValue = defaultValue;
      this.choices = choices;
    }

    /** What a value must be, e.g. {@code a positive integer}. */
    String describe() {
      if (kind.equals("choice")) {
        return "one of " + String.join(", ", choices);
      }
      String description = DESCRIPTIONS.get(kind);
      return description != null ? description : "a " + kind + " value";
    }

    /** Whether {@code value} (a checked JSON value) fits; unknown kinds are left to Python. */
    boolean fits(Object value) {
      switch (kind) {
        case "number":
          return isNumber(value);
        case "positive_int":
          return Json.isInteger(value) && ((Number) value).doubleValue() >= 1;
        case "numbers":
          return isNumber(value) || (value instanceof List && !((List<?>) value).isEmpty() && allNumbers((List<?>) value));
        case "string_list":
          return value instanceof List && !((List<?>) value).isEmpty() && allStrings((List<?>) value);
        case "string_map":
          return value instanceof Map && !((Map<?, ?>) value).isEmpty() && allStrings(((Map<?, ?>) value).values());
        case "shape":
          return isShape(value);
        case "choice":
          return choices.contains(value);
        default:
          return true;
      }
    }
  }

  /** One built-in step. */
  static final class Definition {
    final String name;
    final String stage;
    final List<Param> params;
    /** The kinds a postprocessing step accepts; empty for any. */
    final Set<InferenceKind> accepts;
    /** The kind a postprocessing step produces; null when unknown ({@code any}) or preprocessing. */
    final InferenceKind produces;
    final String producesName;

    Definition(String name, String stage, List<Param> params, Set<InferenceKind> accepts, String producesName) {
      this.name = name;
      this.stage = stage;
      this.params = params;
      this.accepts = accepts;
      this.producesName = producesName;
      this.produces = InferenceKind.fromWireName(producesName);
    }

    /** The parameters as Python describes them in its errors. */
    String describeParams() {
      List<String> described = new ArrayList<>();
      for (Param p : params) {
        if (p.required) {
          described.add(p.name + " (" + p.describe() + ")");
        } else if (p.defaultValue == null) {
          described.add(p.name + " (" + p.describe() + ", optional)");
        } else {
          described.add(p.name + " (" + p.describe() + ", default " + Json.write(p.defaultValue) + ")");
        }
      }
      return described.isEmpty() ? "none" : String.join(", ", described);
    }
  }

  private static final class Holder {
    static final Map<String, Definition> STEPS = load();
  }

  /** Every built-in step by name, in catalog order. */
  static Map<String, Definition> steps() {
    return Holder.STEPS;
  }

  /** The built-in step {@code name}, or null for a step that is not built in. */
  static Definition lookup(String name) {
    return Holder.STEPS.get(name);
  }

  /** The names of the built-in steps of {@code stage}, in catalog order. */
  static List<String> names(String stage) {
    List<String> names = new ArrayList<>();
    for (Definition d : Holder.STEPS.values()) {
      if (d.stage.equals(stage)) {
        names.add(d.name);
      }
    }
    return names;
  }

  /**
   * Checks {@code params} (JSON values) against the built-in step's parameters and the rules that
   * relate them; {@code where} starts each message, e.g. {@code Step.topK()}.
   */
  static void checkParams(String where, Definition step, Map<String, Object> params) {
    Set<String> known = new HashSet<>();
    for (Param p : step.params) {
      known.add(p.name);
    }
    Set<String> unknown = new TreeSet<>(params.keySet());
    unknown.removeAll(known);
    if (!unknown.isEmpty()) {
      List<String> quoted = new ArrayList<>();
      for (String name : unknown) {
        quoted.add("'" + name + "'");
      }
      throw new IllegalArgumentException(
          where + ": unknown parameter(s) " + String.join(", ", quoted) + "; allowed: " + step.describeParams());
    }
    for (Param p : step.params) {
      Object value = params.get(p.name);
      if (value == null) {
        if (p.required) {
          throw new IllegalArgumentException(
              where + ": parameter '" + p.name + "' is required; allowed: " + step.describeParams());
        }
        continue;
      }
      if (!p.fits(value)) {
        throw new IllegalArgumentException(
            where + ": parameter '" + p.name + "' must be " + p.describe() + ", got " + Json.write(value));
      }
    }
    checkTogether(where, step.name, params);
  }

  /** The rules that relate a built-in step's parameters (Python's {@code validate} functions). */
  private static void checkTogether(String where, String step, Map<String, Object> params) {
    switch (step) {
      case "normalize":
        Object mean = params.get("mean");
        Object std = params.get("std");
        for (Object s : std instanceof List ? (List<?>) std : Collections.singletonList(std)) {
          if (((Number) s).doubleValue() == 0) {
            throw new IllegalArgumentException(
                where + ": parameter 'std' must be non-zero everywhere, got " + Json.write(std));
          }
        }
        if (mean instanceof List && std instanceof List && ((List<?>) mean).size() != ((List<?>) std).size()) {
          throw new IllegalArgumentException(
              where + ": parameters 'mean' and 'std' must have the same length, got "
                  + ((List<?>) mean).size() + " and " + ((List<?>) std).size());
        }
        break;
      case "top_k":
      case "scores":
        List<?> names = (List<?>) params.get("names");
        if (names != null && new HashSet<>(names).size() != names.size()) {
          throw new IllegalArgumentException(
              where + ": parameter 'names' must be distinct strings (they become map keys), got "
                  + Json.write(names));
        }
        if (step.equals("top_k") && names != null && ((Number) params.get("k")).longValue() > names.size()) {
          throw new IllegalArgumentException(
              where + ": parameter 'k' must be at most the " + names.size() + " names, got " + params.get("k"));
        }
        break;
      default:
        break;
    }
  }

  /** Fails for a step that does not belong in {@code stage}; {@code method} names the setter. */
  static void checkStage(String method, String stage, List<Step> steps) {
    for (Step step : steps) {
      Definition definition = lookup(step.getName());
      if (definition != null && !definition.stage.equals(stage)) {
        throw new IllegalArgumentException(
            method + ": step '" + step.getName() + "' is a " + definition.stage + " step; " + stage
                + " steps: " + String.join(", ", names(stage)) + " and steps registered by Python packages");
      }
      if (stage.equals(PREPROCESS) && step.getProducing() != null) {
        throw new IllegalArgumentException(
            method + ": step '" + step.getName() + "' declares producing(" + step.getProducing()
                + "), but preprocessing steps turn examples into model input and produce no "
                + "inference; remove producing() or move the step to withPostprocess()");
      }
    }
  }

  /**
   * The kind of the inference after {@code postprocess}, starting from the models' {@code output};
   * fails for a step that does not take the kind it receives and when the final kind is unknown.
   */
  static InferenceKind kindAfter(ModelOutput output, List<Step> postprocess) {
    InferenceKind kind = output.kind();
    String from = "from the model output " + output;
    Step last = null;
    for (Step step : postprocess) {
      Definition definition = lookup(step.getName());
      if (definition == null) {
        kind = step.getProducing();
      } else {
        if (!definition.accepts.isEmpty() && kind != null && !definition.accepts.contains(kind)) {
          List<String> accepted = new ArrayList<>();
          for (InferenceKind k : definition.accepts) {
            accepted.add(k.wireName());
          }
          throw new IllegalArgumentException(
              "withPostprocess(): step '" + step.getName() + "' takes " + article(accepted.get(0))
                  + String.join(" or ", accepted) + " but receives " + article(kind.wireName())
                  + kind.wireName() + " here (" + from + "); reorder the steps "
                  + "or change the model's withOutput()");
        }
        kind = definition.produces;
      }
      from = "from step '" + step.getName() + "'";
      last = step;
    }
    if (kind == null) {
      Definition definition = lookup(last.getName());
      String why =
          definition == null
              ? "is not a built-in step and declares no output kind"
              : "produces '" + definition.producesName + "', which Java cannot type";
      throw new IllegalArgumentException(
          "withPostprocess(): the last step '" + last.getName() + "' " + why + ", so the type of "
              + "the inference field is unknown; declare what it produces with Step.named(\""
              + last.getName() + "\", params).producing(kind), kind one of "
              + Model.names(java.util.Arrays.asList(InferenceKind.values())));
    }
    return kind;
  }

  private static Map<String, Definition> load() {
    String text;
    try (InputStream in = StepCatalog.class.getResourceAsStream(RESOURCE)) {
      if (in == null) {
        throw new IllegalStateException(
            "the step catalog " + RESOURCE + " is not on the classpath next to "
                + StepCatalog.class.getName() + "; the InferBridge jar is incomplete");
      }
      ByteArrayOutputStream bytes = new ByteArrayOutputStream();
      byte[] buffer = new byte[8192];
      for (int n; (n = in.read(buffer)) > 0; ) {
        bytes.write(buffer, 0, n);
      }
      text = new String(bytes.toByteArray(), StandardCharsets.UTF_8);
    } catch (IOException e) {
      throw new IllegalStateException("cannot read the step catalog " + RESOURCE, e);
    }
    try {
      return parse(text);
    } catch (IOException | RuntimeException e) {
      throw new IllegalStateException("the step catalog " + RESOURCE + " is malformed: " + e.getMessage(), e);
    }
  }

  /** The catalog in {@code text}, the JSON list that {@code catalog_description()} writes. */
  static Map<String, Definition> parse(String text) throws IOException {
    Map<String, Definition> steps = new LinkedHashMap<>();
    for (Object item : (List<?>) Json.read(text)) {
      Map<?, ?> step = (Map<?, ?>) item;
      List<Param> params = new ArrayList<>();
      for (Object p : (List<?>) step.get("params")) {
        Map<?, ?> param = (Map<?, ?>) p;
        List<String> choices = new ArrayList<>();
        for (Object choice : (List<?>) param.get("choices")) {
          choices.add((String) choice);
        }
        params.add(
            new Param(
                (String) param.get("name"),
                (String) param.get("kind"),
                Boolean.TRUE.equals(param.get("required")),
                param.get("default"),
                Collections.unmodifiableList(choices)));
      }
      Set<InferenceKind> accepts = EnumSet.noneOf(InferenceKind.class);
      boolean acceptsAny = false;
      for (Object kind : (List<?>) step.get("accepts")) {
        InferenceKind known = InferenceKind.fromWireName((String) kind);
        if (known == null) {
          acceptsAny = true; // "any", or a kind this library does not know: Python checks it
        } else {
          accepts.add(known);
        }
      }
      String name = (String) step.get("name");
      String stage = (String) step.get("stage");
      if (!PREPROCESS.equals(stage) && !POSTPROCESS.equals(stage)) {
        throw new IllegalArgumentException("step '" + name + "' has the stage " + stage);
      }
      steps.put(
          name,
          new Definition(
              name,
              stage,
              Collections.unmodifiableList(params),
              acceptsAny ? EnumSet.noneOf(InferenceKind.class) : accepts,
              String.valueOf(step.get("produces"))));
    }
    return Collections.unmodifiableMap(steps);
  }

  /** "a " or "an " for {@code word}. */
  private static String article(String word) {
    return "aeiou".indexOf(word.charAt(0)) >= 0 ? "an " : "a ";
  }

  private static boolean isNumber(Object value) {
    return value instanceof Number && Json.isFinite((Number) value);
  }

  private static boolean allNumbers(List<?> values) {
    for (Object v : values) {
      if (!isNumber(v)) {
        return false;
      }
    }
    return true;
  }

  private static boolean allStrings(Iterable<?> values) {
    for (Object v : values) {
      if (!(v instanceof String)) {
        return false;
      }
    }
    return true;
  }

  private static boolean isShape(Object value) {
    if (!(value instanceof List) || ((List<?>) value).isEmpty()) {
      return false;
    }
    int unknown = 0;
    for (Object d : (List<?>) value) {
      if (!Json.isInteger(d)) {
        return false;
      }
      long n = ((Number) d).longValue();
      if (n == -1) {
        unknown++;
      } else if (n < 1) {
        return false;
      }
    }
    return unknown <= 1;
  }
}
