package dev.inferbridge;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.RandomAccess;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.transforms.DoFn;
import org.apache.beam.sdk.transforms.windowing.BoundedWindow;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TupleTag;
import org.joda.time.Duration;
import org.joda.time.Instant;

/**
 * Packs input Rows into block Rows of {@link Blocks#inputSchema} (the packed-blocks path of {@link
 * Inference#withBlockSize}); Rows that cannot be packed become failure Rows ({@link
 * Inference#FAILURE_SCHEMA}, stage {@code input}) on the failures tag, at once.
 *
 * <p>Rows are buffered per window within a bundle. A block is emitted when it holds {@code
 * rowsPerBlock} Rows, when the next Row of its window has another number of features, and at the
 * end of the bundle; it carries its window and the smallest timestamp of its Rows.
 */
final class PackBlocks extends DoFn<Row, Row> {
  private static final long serialVersionUID = 1L;

  /** The error type of Rows that cannot be packed, as the Python row path names it. */
  static final String ERROR_TYPE = "ValueError";

  /** The largest features array of one block, in bytes (the largest Java array, with margin). */
  static final int MAX_BLOCK_BYTES = Integer.MAX_VALUE - 64;

  private static final int MIN_ROWS = 64;
  private static final int MESSAGE_VALUE_CHARS = 200;

  private final Schema blockSchema;
  private final int rowsPerBlock;
  private final TupleTag<Row> blocksTag;
  private final TupleTag<Row> failuresTag;
  private final String keyField;
  private final int keyIndex;
  private final boolean stringKeys;
  private final String[] featureFields;
  private final int[] featureIndices;
  /** 0 for a numeric field, 1 for an array of numbers, 2 for an array of arrays, ... */
  private final int[] featureDepths;
  private final int[] passthroughIndices;

  private transient Map<BoundedWindow, Block> blocks;
  private transient BoundedWindow lastWindow;
  private transient Block lastBlock;

  PackBlocks(
      Schema input,
      String keyField,
      List<String> featureFields,
      List<String> passthroughFields,
      int rowsPerBlock,
      TupleTag<Row> blocksTag,
      TupleTag<Row> failuresTag) {
    this.blockSchema = Blocks.inputSchema(input, keyField, passthroughFields);
    this.rowsPerBlock = rowsPerBlock;
    this.blocksTag = blocksTag;
    this.failuresTag = failuresTag;
    this.keyField = keyField;
    this.keyIndex = input.indexOf(keyField);
    this.stringKeys = Blocks.stringKeys(input, keyField);
    this.featureFields = featureFields.toArray(new String[0]);
    this.featureIndices = new int[featureFields.size()];
    this.featureDepths = new int[featureFields.size()];
    for (int i = 0; i < this.featureFields.length; i++) {
      featureIndices[i] = input.indexOf(this.featureFields[i]);
      featureDepths[i] = depth(input.getField(this.featureFields[i]).getType());
    }
    this.passthroughIndices = new int[passthroughFields.size()];
    for (int i = 0; i < passthroughIndices.length; i++) {
      passthroughIndices[i] = input.indexOf(passthroughFields.get(i));
    }
  }

  Schema blockSchema() {
    return blockSchema;
  }

  private static int depth(FieldType type) {
    int depth = 0;
    while (type.getTypeName().isCollectionType()) {
      type = type.getCollectionElementType();
      depth++;
    }
    return depth;
  }

  /**
   * Blocks flushed while an element is processed carry the smallest timestamp of their Rows,
   * which may be earlier than the element's; the Rows are still in this bundle, so the watermark
   * has not passed them.
   */
  @Override
  @Deprecated
  public Duration getAllowedTimestampSkew() {
    return Duration.millis(Long.MAX_VALUE);
  }

  @StartBundle
  public void startBundle() {
    blocks = new HashMap<>();
    lastWindow = null;
    lastBlock = null;
  }

  @ProcessElement
  public void processElement(
      @Element Row row, @Timestamp Instant timestamp, BoundedWindow window, MultiOutputReceiver out) {
    Object key = row.getValue(keyIndex);
    if (key == null) {
      fail(out, row, null, "key_field " + pyRepr(keyField) + " is null");
      return;
    }
    Object wireKey = stringKeys || key instanceof Long ? key : Long.valueOf(((Number) key).longValue());
    int count = 0;
    for (int f = 0; f < featureIndices.length; f++) {
      Object value = row.getValue(featureIndices[f]);
      if (value == null) {
        fail(out, row, key, "feature field " + pyRepr(featureFields[f]) + " is null");
        return;
      }
      int n = countFeatures(value, featureDepths[f]);
      if (n < 0) {
        fail(out, row, key, notNumeric(featureFields[f], value, featureDepths[f]));
        return;
      }
      if (n == 0) {
        fail(out, row, key, "feature field " + pyRepr(featureFields[f]) + " is empty; allowed: at least one number");
        return;
      }
      count += n;
    }
    if ((long) count * 8 > MAX_BLOCK_BYTES) {
      fail(out, row, key, "the row has " + count + " features; a block holds at most " + (MAX_BLOCK_BYTES / 8)
          + " features; use the row path (no withBlockSize()) for rows this large");
      return;
    }
    Block block = blockFor(window);
    if (block.size > 0 && block.featureCount != count) {
      out.get(blocksTag).outputWithTimestamp(block.flush(), new Instant(block.minTimestamp));
      block.minTimestamp = Long.MAX_VALUE;
    }
    int maxRows = Math.min(rowsPerBlock, MAX_BLOCK_BYTES / (count * 8));
    block.featureCount = count;
    block.ensureRoom(maxRows);
    ByteBuffer features = block.features;
    int start = features.position();
    for (int f = 0; f < featureIndices.length; f++) {
      if (!write(row.getValue(featureIndices[f]), featureDepths[f], features)) {
        features.position(start);
        fail(out, row, key, notNumeric(featureFields[f], row.getValue(featureIndices[f]), featureDepths[f]));
        return;
      }
    }
    int i = block.size++;
    block.keys[i] = wireKey;
    for (int p = 0; p < passthroughIndices.length; p++) {
      block.passthrough[p][i] = row.getValue(passthroughIndices[p]);
    }
    long millis = timestamp.getMillis();
    if (millis < block.minTimestamp) {
      block.minTimestamp = millis;
    }
    if (block.size >= maxRows) {
      out.get(blocksTag).outputWithTimestamp(block.flush(), new Instant(block.minTimestamp));
      block.minTimestamp = Long.MAX_VALUE;
    }
  }

  @FinishBundle
  public void finishBundle(FinishBundleContext context) {
    for (Map.Entry<BoundedWindow, Block> entry : blocks.entrySet()) {
      Block block = entry.getValue();
      if (block.size > 0) {
        context.output(blocksTag, block.flush(), new Instant(block.minTimestamp), entry.getKey());
      }
    }
    blocks.clear();
    lastWindow = null;
    lastBlock = null;
  }

  private Block blockFor(BoundedWindow window) {
    if (window == lastWindow) {
      return lastBlock;
    }
    Block block = blocks.get(window);
    if (block == null) {
      block = new Block(blockSchema, passthroughIndices.length);
      blocks.put(window, block);
    }
    lastWindow = window;
    lastBlock = block;
    return block;
  }

  /** The number of numbers in {@code value} (of the given array depth), or -1 if it has nulls or is ragged. */
  private static int countFeatures(Object value, int depth) {
    if (depth == 0) {
      return 1;
    }
    if (depth == 1) {
      if (value instanceof java.util.Collection) {
        return ((java.util.Collection<?>) value).size();
      }
      int n = 0;
      for (Iterator<?> it = ((Iterable<?>) value).iterator(); it.hasNext(); it.next()) {
        n++;
      }
      return n;
    }
    int total = 0;
    int each = -1;
    for (Object item : (Iterable<?>) value) {
      if (item == null) {
        return -1;
      }
      int n = countFeatures(item, depth - 1);
      if (n < 0 || (each >= 0 && n != each)) {
        return -1;
      }
      each = n;
      total += n;
    }
    return total;
  }

  /** Writes the numbers of {@code value} as doubles; false at a null (the buffer is then partly written). */
  private static boolean write(Object value, int depth, ByteBuffer out) {
    if (depth == 0) {
      return put(value, out);
    }
    if (depth == 1 && value instanceof List && value instanceof RandomAccess) {
      List<?> list = (List<?>) value;
      for (int i = 0, n = list.size(); i < n; i++) {
        if (!put(list.get(i), out)) {
          return false;
        }
      }
      return true;
    }
    for (Object item : (Iterable<?>) value) {
      if (depth == 1 ? !put(item, out) : item == null || !write(item, depth - 1, out)) {
        return false;
      }
    }
    return true;
  }

  private static boolean put(Object value, ByteBuffer out) {
    if (value instanceof Double) {
      out.putDouble((Double) value);
    } else if (value instanceof Number) {
      out.putDouble(((Number) value).doubleValue());
    } else {
      return false;
    }
    return true;
  }

  private void fail(MultiOutputReceiver out, Row row, Object key, String message) {
    out.get(failuresTag)
        .output(
            Row.withSchema(Inference.FAILURE_SCHEMA)
                .addValues("input", null, ERROR_TYPE, message, Json.row(row), key == null ? null : String.valueOf(key), null)
                .build());
  }

  /**
   * Why {@code value} of a feature field cannot be packed: a null inside (in the words of the
   * Python layouts), or nested arrays of unequal lengths.
   */
  private static String notNumeric(String field, Object value, int depth) {
    String where = nullAt(value, depth);
    if (where != null) {
      String position = depth == 1 ? where.substring(1, where.length() - 1) : where;
      return "feature field " + pyRepr(field) + " holds a null at position " + position + "; allowed: numbers";
    }
    String text = Json.python(value);
    if (text.length() > MESSAGE_VALUE_CHARS) {
      text = text.substring(0, MESSAGE_VALUE_CHARS) + "...";
    }
    return "feature field " + pyRepr(field) + " is not numeric: " + text + " (nested arrays of different lengths; "
        + "allowed: nested arrays of equal lengths (a rectangular array))";
  }

  /** The index path of the first null number in {@code value}, e.g. {@code [3]} or {@code [1][0]}; null if none. */
  private static String nullAt(Object value, int depth) {
    if (value == null) {
      return "";
    }
    if (depth == 0) {
      return value instanceof Number ? null : "";
    }
    int i = 0;
    for (Object item : (Iterable<?>) value) {
      String inner = nullAt(item, depth - 1);
      if (inner != null) {
        return "[" + i + "]" + inner;
      }
      i++;
    }
    return null;
  }

  /** {@code text} as Python's {@code repr} writes a string, as the Python row path's messages do. */
  static String pyRepr(String text) {
    char quote = text.indexOf('\'') >= 0 && text.indexOf('"') < 0 ? '"' : '\'';
    StringBuilder s = new StringBuilder(text.length() + 2).append(quote);
    for (int i = 0; i < text.length(); i++) {
      char c = text.charAt(i);
      if (c == '\\' || c == quote) {
        s.append('\\').append(c);
      } else if (c == '\n') {
        s.append("\\n");
      } else if (c == '\r') {
        s.append("\\r");
      } else if (c == '\t') {
        s.append("\\t");
      } else {
        s.append(c);
      }
    }
    return s.append(quote).toString();
  }

  /** The Rows of one window waiting to be sent, as columns. */
  static final class Block {
    private final Schema schema;
    int size;
    int featureCount;
    long minTimestamp = Long.MAX_VALUE;
    Object[] keys = new Object[0];
    Object[][] passthrough;
    ByteBuffer features;
    /** The rows of the last block that filled its buffer: the size of the next buffer. */
    private int fullRows;

    Block(Schema schema, int passthroughCount) {
      this.schema = schema;
      this.passthrough = new Object[passthroughCount][0];
    }

    /** Room for one more Row of {@link #featureCount} features, in a block of at most {@code maxRows} Rows. */
    void ensureRoom(int maxRows) {
      int rowBytes = featureCount * 8;
      long needed = (long) (size + 1) * rowBytes;
      if (features == null || features.capacity() < needed) {
        int rows = Math.min(maxRows, Math.max(Math.max(MIN_ROWS, fullRows), size * 2));
        rows = Math.max(rows, size + 1);
        ByteBuffer bigger = ByteBuffer.allocate(rows * rowBytes).order(ByteOrder.LITTLE_ENDIAN);
        if (features != null) {
          bigger.put(features.array(), 0, features.position());
        }
        features = bigger;
      }
      if (keys.length <= size) {
        int rows = Math.max(size + 1, Math.min(maxRows, Math.max(MIN_ROWS, size * 2)));
        keys = Arrays.copyOf(keys, rows);
        for (int p = 0; p < passthrough.length; p++) {
          passthrough[p] = Arrays.copyOf(passthrough[p], rows);
        }
      }
    }

    /** The block Row of the buffered Rows; empties the block (the timestamp is the caller's to reset). */
    Row flush() {
      int n = size;
      int bytes = n * featureCount * 8;
      byte[] packed;
      if (bytes == features.capacity()) {
        packed = features.array();
        features = null;
        fullRows = n;
      } else {
        packed = Arrays.copyOf(features.array(), bytes);
        features.clear();
      }
      Object[] values = new Object[3 + passthrough.length];
      values[0] = Arrays.asList(Arrays.copyOf(keys, n));
      values[1] = packed;
      values[2] = featureCount;
      Arrays.fill(keys, 0, n, null);
      for (int p = 0; p < passthrough.length; p++) {
        values[3 + p] = Arrays.asList(Arrays.copyOf(passthrough[p], n));
        Arrays.fill(passthrough[p], 0, n, null);
      }
      size = 0;
      return Row.withSchema(schema).attachValues(values);
    }
  }
}
