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

/** JSON values as the wire carries them: step parameters and model options. */
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
