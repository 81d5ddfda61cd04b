package dev.inferbridge;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import java.lang.reflect.Array;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.values.Row;

/**
 * JSON values as the wire carries them: step parameters and model options; and input Rows as the
 * {@code element} of failure Rows, written as the Python row path writes them.
 */
final class Json {
  private static final ObjectMapper MAPPER =
      new ObjectMapper().configure(SerializationFeature.ORDER_MAP_ENTRIES_BY_KEYS, true);

  private Json() {}

  /**
   * {@code value} as an immutable JSON value: null, a String, a Boolean, a finite Number, a List
   * (from a List or an array) or a Map with String keys, recursively. {@code where} starts the
   * error message, e.g. {@code PytorchModel.withParams(): params.hidden}.
   */
  static Object value(String where, Object value) {
    if (value == null || value instanceof String || value instanceof Boolean) {
      return value;
    }
    if (value instanceof Number) {
      if (!isFinite((Number) value)) {
        throw new IllegalArgumentException(where + " is " + value + "; allowed: finite numbers");
      }
      return value;
    }
    if (value instanceof Iterable || value.getClass().isArray()) {
      List<Object> items = new ArrayList<>();
      int i = 0;
      for (Object item : iterate(value)) {
        items.add(value(where + "[" + i++ + "]", item));
      }
      return Collections.unmodifiableList(items);
    }
    if (value instanceof Map) {
      return object(where, (Map<?, ?>) value);
    }
    throw new IllegalArgumentException(
        where + " holds a " + value.getClass().getName() + " (" + value + "), which is not a JSON "
            + "value; allowed: strings, numbers, booleans, null, lists and maps with string keys");
  }

  /** {@code map} as an immutable JSON object, its values checked by {@link #value}. */
  static Map<String, Object> object(String where, Map<?, ?> map) {
    if (map == null) {
      throw new IllegalArgumentException(where + " must be a map, got null");
    }
    Map<String, Object> copy = new LinkedHashMap<>();
    for (Map.Entry<?, ?> e : map.entrySet()) {
      if (!(e.getKey() instanceof String)) {
        throw new IllegalArgumentException(
            where + " has the key " + e.getKey() + "; JSON object keys are strings");
      }
      String key = (String) e.getKey();
      copy.put(key, value(where + "." + key, e.getValue()));
    }
    return Collections.unmodifiableMap(copy);
  }

  /** Compact JSON, object keys sorted (as Python's {@code json.dumps(sort_keys=True)}). */
  static String write(Object value) {
    try {
      return MAPPER.writeValueAsString(value);
    } catch (JsonProcessingException e) {
      throw new IllegalStateException("cannot write " + value + " as JSON", e);
    }
  }

  /** Parses JSON text into Maps, Lists, Strings, Numbers, Booleans and nulls. */
  static Object read(String text) throws JsonProcessingException {
    return MAPPER.readValue(text, Object.class);
  }

  /**
   * {@code row} as a strict JSON object of its fields in schema order, in the form of Python's
   * {@code json.dumps} (the {@code element} of the Python layouts' failure Rows): {@code ", "} and
   * {@code ": "} separators, non-ASCII characters escaped, floats as Python writes them ({@code
   * 1e-05}), non-finite floats as the strings {@code "NaN"}, {@code "Infinity"} and {@code
   * "-Infinity"}, bytes as hex text; nested Rows are objects.
   */
  static String row(Row row) {
    StringBuilder out = new StringBuilder(64);
    writePython(out, row);
    return out.toString();
  }

  /** {@code value} (a Row field value) in the form of {@link #row}. */
  static String python(Object value) {
    StringBuilder out = new StringBuilder(32);
    writePython(out, value);
    return out.toString();
  }

  private static void writePython(StringBuilder out, Object value) {
    if (value == null) {
      out.append("null");
    } else if (value instanceof String) {
      writePythonString(out, (String) value);
    } else if (value instanceof Double || value instanceof Float) {
      double d = ((Number) value).doubleValue();
      if (Double.isNaN(d) || Double.isInfinite(d)) {
        writePythonString(out, pythonFloat(d)); // strict JSON has no NaN or Infinity
      } else {
        out.append(pythonFloat(d));
      }
    } else if (value instanceof Number || value instanceof Boolean) {
      out.append(value);
    } else if (value instanceof byte[]) {
      StringBuilder hex = new StringBuilder();
      for (byte b : (byte[]) value) {
        hex.append(Character.forDigit((b >> 4) & 0xf, 16)).append(Character.forDigit(b & 0xf, 16));
      }
      writePythonString(out, hex.toString());
    } else if (value instanceof Row) {
      Row row = (Row) value;
      Schema schema = row.getSchema();
      out.append('{');
      for (int i = 0; i < schema.getFieldCount(); i++) {
        if (i > 0) {
          out.append(", ");
        }
        writePythonString(out, schema.getField(i).getName());
        out.append(": ");
        writePython(out, row.getValue(i));
      }
      out.append('}');
    } else if (value instanceof Map) {
      out.append('{');
      boolean first = true;
      for (Map.Entry<?, ?> e : ((Map<?, ?>) value).entrySet()) {
        if (!first) {
          out.append(", ");
        }
        first = false;
        writePythonString(out, String.valueOf(e.getKey()));
        out.append(": ");
        writePython(out, e.getValue());
      }
      out.append('}');
    } else if (value instanceof Iterable) {
      out.append('[');
      boolean first = true;
      for (Object item : (Iterable<?>) value) {
        if (!first) {
          out.append(", ");
        }
        first = false;
        writePython(out, item);
      }
      out.append(']');
    } else {
      writePythonString(out, value.toString());
    }
  }

  /** A JSON string as Python's {@code json.dumps} writes it (ASCII only). */
  private static void writePythonString(StringBuilder out, String text) {
    out.append('"');
    for (int i = 0; i < text.length(); i++) {
      char c = text.charAt(i);
      switch (c) {
        case '"':
          out.append("\\\"");
          break;
        case '\\':
          out.append("\\\\");
          break;
        case '\n':
          out.append("\\n");
          break;
        case '\r':
          out.append("\\r");
          break;
        case '\t':
          out.append("\\t");
          break;
        case '\b':
          out.append("\\b");
          break;
        case '\f':
          out.append("\\f");
          break;
        default:
          if (c < 0x20 || c > 0x7e) {
            out.append(String.format("\\u%04x", (int) c));
          } else {
            out.append(c);
          }
      }
    }
    out.append('"');
  }

  /** {@code d} as Python's {@code repr(float)}: {@code 1.0}, {@code 0.0001}, {@code 1e-05}, {@code 1e+16}, {@code NaN}. */
  static String pythonFloat(double d) {
    if (Double.isNaN(d)) {
      return "NaN";
    }
    if (Double.isInfinite(d)) {
      return d > 0 ? "Infinity" : "-Infinity";
    }
    if (d == 0) {
      return 1 / d < 0 ? "-0.0" : "0.0";
    }
    BigDecimal exact = new BigDecimal(Double.toString(d)).stripTrailingZeros();
    String digits = exact.unscaledValue().abs().toString();
    int exponent = digits.length() - 1 - exact.scale(); // of the first digit
    StringBuilder out = new StringBuilder(24);
    if (d < 0) {
      out.append('-');
    }
    if (exponent < -4 || exponent >= 16) {
      out.append(digits.charAt(0));
      if (digits.length() > 1) {
        out.append('.').append(digits, 1, digits.length());
      }
      out.append('e').append(exponent < 0 ? '-' : '+');
      int abs = Math.abs(exponent);
      if (abs < 10) {
        out.append('0');
      }
      return out.append(abs).toString();
    }
    if (exponent < 0) {
      out.append("0.");
      for (int i = -1; i > exponent; i--) {
        out.append('0');
      }
      return out.append(digits).toString();
    }
    if (digits.length() <= exponent + 1) {
      out.append(digits);
      for (int i = digits.length(); i <= exponent; i++) {
        out.append('0');
      }
      return out.append(".0").toString();
    }
    return out.append(digits, 0, exponent + 1).append('.').append(digits, exponent + 1, digits.length()).toString();
  }

  static boolean isFinite(Number n) {
    if (n instanceof Double || n instanceof Float) {
      double d = n.doubleValue();
      return !Double.isNaN(d) && !Double.isInfinite(d);
    }
    return true;
  }

  /** Whether {@code value} is a JSON integer (not a floating-point number). */
  static boolean isInteger(Object value) {
    return value instanceof Integer || value instanceof Long || value instanceof Short
        || value instanceof Byte || value instanceof BigInteger
        || (value instanceof BigDecimal && ((BigDecimal) value).scale() <= 0);
  }

  private static Iterable<?> iterate(Object value) {
    if (value instanceof Iterable) {
      return (Iterable<?>) value;
    }
    List<Object> items = new ArrayList<>();
    for (int i = 0; i < Array.getLength(value); i++) {
      items.add(Array.get(value, i));
    }
    return items;
  }
}
