package dev.inferbridge;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.io.ByteArrayInputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import org.apache.beam.model.pipeline.v1.ExternalTransforms.ExternalConfigurationPayload;
import org.apache.beam.model.pipeline.v1.RunnerApi;
import org.apache.beam.model.pipeline.v1.SchemaApi;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.coders.RowCoder;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.schemas.Schema.TypeName;
import org.apache.beam.sdk.schemas.SchemaTranslation;
import org.apache.beam.sdk.testing.CrashingRunner;
import org.apache.beam.sdk.testing.PAssert;
import org.apache.beam.sdk.testing.TestPipeline;
import org.apache.beam.sdk.transforms.Create;
import org.apache.beam.sdk.transforms.DoFn;
import org.apache.beam.sdk.transforms.ParDo;
import org.apache.beam.sdk.transforms.windowing.BoundedWindow;
import org.apache.beam.sdk.transforms.windowing.GlobalWindow;
import org.apache.beam.sdk.transforms.windowing.IntervalWindow;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.PCollectionTuple;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TupleTag;
import org.apache.beam.sdk.values.TupleTagList;
import org.joda.time.Instant;
import org.junit.Rule;
import org.junit.Test;

/**
 * The packed-blocks path ({@link Inference#withBlockSize}): {@link PackBlocks} and {@link
 * UnpackBlocks} called bundle by bundle, and run on the DirectRunner with a Java stand-in for the
 * Python block composite; the construction-time checks. None of these needs Python or a service.
 */
public class BlocksTest {
  private static final Schema INPUT =
      Schema.builder()
          .addNullableField("id", FieldType.STRING)
          .addNullableField("n", FieldType.INT32)
          .addInt16Field("small")
          .addNullableField("pixels", FieldType.array(FieldType.DOUBLE.withNullable(true)))
          .addDoubleField("weight")
          .addNullableField("label", FieldType.INT64)
          .addNullableField("note", FieldType.STRING)
          .addField("grid", FieldType.array(FieldType.array(FieldType.FLOAT)))
          .addArrayField("ints", FieldType.INT32)
          .build();

  private static final TupleTag<Row> BLOCKS = Inference.BLOCKS_TAG;
  private static final TupleTag<Row> FAILURES = Inference.PACK_FAILURES_TAG;

  @Rule public final transient TestPipeline pipeline = TestPipeline.create();

  /** An input Row whose features follow from {@code i}: pixels [i, i + 0.5, -i]. */
  private static Row row(int i) {
    return row("k" + i, i, Arrays.asList((double) i, i + 0.5, (double) -i));
  }

  private static Row row(String id, Integer n, List<Double> pixels) {
    return Row.withSchema(INPUT)
        .addValues(
            id,
            n,
            (short) (n == null ? 0 : n % 100),
            pixels,
            n == null ? 0.0 : n * 2.0,
            n == null || n % 3 == 0 ? null : (long) n * 10,
            n == null || n % 2 == 0 ? null : "note" + n,
            Arrays.asList(Arrays.asList(1f, 2f), Arrays.asList(3f, 4f)),
            Arrays.asList(7, 8))
        .build();
  }

  private static PackBlocks pack(String key, int rowsPerBlock, List<String> features, String... passthrough) {
    return new PackBlocks(INPUT, key, features, Arrays.asList(passthrough), rowsPerBlock, BLOCKS, FAILURES);
  }

  private static PackBlocks pack(int rowsPerBlock, String... passthrough) {
    return pack("id", rowsPerBlock, Collections.singletonList("pixels"), passthrough);
  }

  private static List<Integer> unsigned(byte[] bytes) {
    List<Integer> values = new ArrayList<>();
    for (byte b : bytes) {
      values.add(b & 0xff);
    }
    return values;
  }

  private static double featureAt(Row block, int row, int feature) {
    int count = block.getInt32(Blocks.FEATURE_COUNT);
    return ByteBuffer.wrap(block.getBytes(Blocks.FEATURES))
        .order(ByteOrder.LITTLE_ENDIAN)
        .getDouble((row * count + feature) * 8);
  }

  // --- PackBlocks, one bundle at a time --------------------------------------------------------

  /** What one bundle of {@link PackBlocks} emitted. */
  private static final class Emitted {
    final List<Row> blocks = new ArrayList<>();
    final List<Instant> timestamps = new ArrayList<>();
    final List<BoundedWindow> windows = new ArrayList<>();
    final List<Row> failures = new ArrayList<>();

    List<Integer> sizes() {
      List<Integer> sizes = new ArrayList<>();
      for (Row block : blocks) {
        sizes.add(block.getArray(Blocks.KEY).size());
      }
      return sizes;
    }
  }

  /** Runs one bundle of {@code rows}, all in the global window at {@code Instant(i)} for row i. */
  private static Emitted bundle(PackBlocks pack, List<Row> rows) {
    List<Instant> timestamps = new ArrayList<>();
    List<BoundedWindow> windows = new ArrayList<>();
    for (int i = 0; i < rows.size(); i++) {
      timestamps.add(new Instant(i));
      windows.add(GlobalWindow.INSTANCE);
    }
    return bundle(pack, rows, timestamps, windows);
  }

  private static Emitted bundle(
      PackBlocks pack, List<Row> rows, List<Instant> timestamps, List<BoundedWindow> windows) {
    Emitted emitted = new Emitted();
    pack.startBundle();
    for (int i = 0; i < rows.size(); i++) {
      Instant timestamp = timestamps.get(i);
      BoundedWindow window = windows.get(i);
      pack.processElement(rows.get(i), timestamp, window, new DoFn.MultiOutputReceiver() {
        @Override
        @SuppressWarnings("unchecked")
        public <T> DoFn.OutputReceiver<T> get(TupleTag<T> tag) {
          return new DoFn.OutputReceiver<T>() {
            @Override
            public void output(T output) {
              outputWithTimestamp(output, timestamp);
            }

            @Override
            public void outputWithTimestamp(T output, Instant at) {
              if (tag.equals(BLOCKS)) {
                emitted.blocks.add((Row) output);
                emitted.timestamps.add(at);
                emitted.windows.add(window);
              } else {
                assertEquals(FAILURES, tag);
                assertEquals(timestamp, at);
                emitted.failures.add((Row) output);
              }
            }
          };
        }

        @Override
        public <T> DoFn.OutputReceiver<Row> getRowReceiver(TupleTag<T> tag) {
          throw new UnsupportedOperationException();
        }
      });
    }
    pack.finishBundle(pack.new FinishBundleContext() {
      @Override
      public PipelineOptions getPipelineOptions() {
        return PipelineOptionsFactory.create();
      }

      @Override
      public void output(Row output, Instant timestamp, BoundedWindow window) {
        throw new AssertionError("blocks go to the blocks tag");
      }

      @Override
      public <T> void output(TupleTag<T> tag, T output, Instant timestamp, BoundedWindow window) {
        assertEquals(BLOCKS, tag);
        emitted.blocks.add((Row) output);
        emitted.timestamps.add(timestamp);
        emitted.windows.add(window);
      }
    });
    return emitted;
  }

  private static List<Row> rows(int count) {
    List<Row> rows = new ArrayList<>();
    for (int i = 0; i < count; i++) {
      rows.add(row(i));
    }
    return rows;
  }

  @Test
  public void blocksHoldTheFeaturesAsLittleEndianFloat64RowMajor() {
    PackBlocks pack = pack(10, "label", "note");
    Emitted emitted = bundle(pack, rows(4));
    assertEquals(1, emitted.blocks.size());
    Row block = emitted.blocks.get(0);
    assertEquals(pack.blockSchema(), block.getSchema());
    assertEquals(
        Arrays.asList("key", "features", "feature_count", "label", "note"), block.getSchema().getFieldNames());
    assertEquals(FieldType.array(FieldType.STRING), block.getSchema().getField("key").getType());
    assertEquals(FieldType.BYTES, block.getSchema().getField("features").getType());
    assertEquals(FieldType.INT32, block.getSchema().getField("feature_count").getType());
    assertEquals(FieldType.array(FieldType.INT64.withNullable(true)), block.getSchema().getField("label").getType());
    assertEquals(Arrays.asList("k0", "k1", "k2", "k3"), block.getArray("key"));
    assertEquals(3, (int) block.getInt32("feature_count"));
    byte[] bytes = block.getBytes("features");
    assertEquals(4 * 3 * 8, bytes.length);
    // row 2, feature 1 starts at (2 * 3 + 1) * 8 = 56: 2.5 as little-endian IEEE 754.
    assertEquals(Double.doubleToLongBits(2.5), ByteBuffer.wrap(bytes, 56, 8).order(ByteOrder.LITTLE_ENDIAN).getLong());
    // 2.5 is 0x4004000000000000: little-endian, the sign and exponent bytes come last.
    assertEquals(Arrays.asList(0, 0, 0, 0, 0, 0, 0x04, 0x40), unsigned(Arrays.copyOfRange(bytes, 56, 64)));
    assertEquals(-3.0, featureAt(block, 3, 2), 0);
    assertEquals(3.5, featureAt(block, 3, 1), 0);
    assertEquals(0.0, featureAt(block, 0, 0), 0);
    // Passthrough values, nulls included, in row order.
    assertEquals(Arrays.asList(null, 10L, 20L, null), block.getArray("label"));
    assertEquals(Arrays.asList(null, "note1", null, "note3"), block.getArray("note"));
    assertEquals(new Instant(0), emitted.timestamps.get(0));
    assertTrue(emitted.failures.isEmpty());
  }

  @Test
  public void severalFeatureFieldsAreConcatenatedInOrderAndNestedArraysFlattened() {
    PackBlocks pack = pack("id", 10, Arrays.asList("weight", "pixels", "small", "grid", "ints"));
    Row block = bundle(pack, rows(3)).blocks.get(0);
    assertEquals(1 + 3 + 1 + 4 + 2, (int) block.getInt32("feature_count"));
    double[] expected = {4.0, 2.0, 2.5, -2.0, 2.0, 1.0, 2.0, 3.0, 4.0, 7.0, 8.0}; // row 2
    for (int f = 0; f < expected.length; f++) {
      assertEquals("feature " + f, expected[f], featureAt(block, 2, f), 0);
    }
  }

  @Test
  public void integerKeysAreWidenedToInt64() {
    Row block = bundle(pack("n", 10, Collections.singletonList("pixels")), rows(3)).blocks.get(0);
    assertEquals(FieldType.array(FieldType.INT64), block.getSchema().getField("key").getType());
    assertEquals(Arrays.asList(0L, 1L, 2L), block.getArray("key"));
    Row small = bundle(pack("small", 10, Collections.singletonList("pixels")), rows(2)).blocks.get(0);
    assertEquals(Arrays.asList(0L, 1L), small.getArray("key"));
  }

  @Test
  public void aBundleIsCutIntoFullBlocksAndTheRest() {
    Emitted emitted = bundle(pack(1000), rows(2500));
    assertEquals(Arrays.asList(1000, 1000, 500), emitted.sizes());
    // Each block has the smallest timestamp of its rows.
    assertEquals(Arrays.asList(new Instant(0), new Instant(1000), new Instant(2000)), emitted.timestamps);
    assertEquals(500 * 3 * 8, emitted.blocks.get(2).getBytes("features").length);
    assertEquals("k1999", emitted.blocks.get(1).<List<Object>>getValue("key").get(999));
    assertEquals(1999.5, featureAt(emitted.blocks.get(1), 999, 1), 0);
    assertEquals(Arrays.asList(1, 1, 1), bundle(pack(1), rows(3)).sizes());
    assertEquals(Arrays.asList(7), bundle(pack(7), rows(7)).sizes());
    assertEquals(Collections.<Integer>emptyList(), bundle(pack(7), rows(0)).sizes());
  }

  @Test
  public void anotherNumberOfFeaturesStartsANewBlock() {
    List<Row> rows = Arrays.asList(
        row("a", 1, Arrays.asList(1.0, 2.0)),
        row("b", 2, Arrays.asList(3.0, 4.0)),
        row("c", 3, Arrays.asList(5.0, 6.0, 7.0)),
        row("d", 4, Arrays.asList(8.0, 9.0, 10.0)),
        row("e", 5, Arrays.asList(11.0, 12.0)));
    Emitted emitted = bundle(pack(100), rows);
    assertEquals(Arrays.asList(2, 2, 1), emitted.sizes());
    List<Integer> counts = new ArrayList<>();
    for (Row block : emitted.blocks) {
      counts.add(block.getInt32("feature_count"));
    }
    assertEquals(Arrays.asList(2, 3, 2), counts);
    assertEquals(Arrays.asList("c", "d"), emitted.blocks.get(1).getArray("key"));
    assertEquals(10.0, featureAt(emitted.blocks.get(1), 1, 2), 0);
    assertEquals(2 * 3 * 8, emitted.blocks.get(1).getBytes("features").length);
    assertEquals(Arrays.asList(new Instant(0), new Instant(2), new Instant(4)), emitted.timestamps);
  }

  @Test
  public void blocksNeverSpanWindowsAndCarryTheirWindowAndSmallestTimestamp() {
    IntervalWindow early = new IntervalWindow(new Instant(0), new Instant(100));
    IntervalWindow late = new IntervalWindow(new Instant(100), new Instant(200));
    List<Row> rows = rows(5);
    List<Instant> timestamps = Arrays.asList(new Instant(50), new Instant(150), new Instant(20), new Instant(120), new Instant(60));
    List<BoundedWindow> windows = Arrays.<BoundedWindow>asList(early, late, early, late, early);
    Emitted emitted = bundle(pack(3), rows, timestamps, windows);
    assertEquals(2, emitted.blocks.size());
    // The early window fills first (3 rows) and is emitted while processing; the late one at the end.
    assertEquals(Arrays.asList("k0", "k2", "k4"), emitted.blocks.get(0).getArray("key"));
    assertEquals(early, emitted.windows.get(0));
    assertEquals(new Instant(20), emitted.timestamps.get(0));
    assertEquals(Arrays.asList("k1", "k3"), emitted.blocks.get(1).getArray("key"));
    assertEquals(late, emitted.windows.get(1));
    assertEquals(new Instant(120), emitted.timestamps.get(1));
  }

  @Test
  public void rowsThatCannotBePackedAreFailuresNamingTheFieldAndValue() {
    Row nullKey = row(null, 1, Arrays.asList(1.0));
    Row nullFeatures = row("b", 2, null);
    Row nullInside = row("c", 3, Arrays.asList(1.0, null));
    Row empty = row("d", 4, Collections.<Double>emptyList());
    Row good = row(5);
    Emitted emitted = bundle(pack(10), Arrays.asList(nullKey, nullFeatures, nullInside, good, empty));
    assertEquals(Arrays.asList(1), emitted.sizes());
    assertEquals(Arrays.asList("k5"), emitted.blocks.get(0).getArray("key"));
    assertEquals(3 * 8, emitted.blocks.get(0).getBytes("features").length);
    List<Row> failures = emitted.failures;
    assertEquals(4, failures.size());
    for (Row failure : failures) {
      assertEquals(Inference.FAILURE_SCHEMA, failure.getSchema());
      assertEquals("input", failure.getString("stage"));
      assertNull(failure.getString("step"));
      assertEquals("ValueError", failure.getString("error_type"));
      assertNull(failure.getString("model_id"));
    }
    assertEquals("key_field 'id' is null", failures.get(0).getString("message"));
    assertNull(failures.get(0).getString("key"));
    assertEquals(
        "{\"id\": null, \"n\": 1, \"small\": 1, \"pixels\": [1.0], \"weight\": 2.0, \"label\": 10, \"note\": \"note1\", "
            + "\"grid\": [[1.0, 2.0], [3.0, 4.0]], \"ints\": [7, 8]}",
        failures.get(0).getString("element"));
    assertEquals("feature field 'pixels' is null", failures.get(1).getString("message"));
    assertEquals("b", failures.get(1).getString("key"));
    assertEquals(
        "feature field 'pixels' holds a null at position 1; allowed: numbers",
        failures.get(2).getString("message"));
    assertEquals("c", failures.get(2).getString("key"));
    assertEquals("feature field 'pixels' is empty; allowed: at least one number", failures.get(3).getString("message"));
    assertEquals("d", failures.get(3).getString("key"));
  }

  @Test
  public void raggedNestedArraysAndEmptyFeatureSetsAreFailures() {
    Schema schema = Schema.builder()
        .addInt64Field("id")
        .addField("grid", FieldType.array(FieldType.array(FieldType.DOUBLE)))
        .addArrayField("a", FieldType.INT32)
        .addArrayField("b", FieldType.INT32)
        .build();
    PackBlocks grid = new PackBlocks(schema, "id", Collections.singletonList("grid"),
        Collections.<String>emptyList(), 10, BLOCKS, FAILURES);
    Row ragged = Row.withSchema(schema)
        .addValues(7L, Arrays.asList(Arrays.asList(1.0), Arrays.asList(2.0, 3.0)), Arrays.asList(1), Arrays.<Integer>asList())
        .build();
    Emitted emitted = bundle(grid, Collections.singletonList(ragged));
    assertEquals(
        "feature field 'grid' is not numeric: [[1.0], [2.0, 3.0]] (nested arrays of different lengths; allowed: "
            + "nested arrays of equal lengths (a rectangular array))",
        emitted.failures.get(0).getString("message"));
    assertEquals("7", emitted.failures.get(0).getString("key"));
    PackBlocks both = new PackBlocks(schema, "id", Arrays.asList("b", "b"),
        Collections.<String>emptyList(), 10, BLOCKS, FAILURES);
    assertEquals(
        "feature field 'b' is empty; allowed: at least one number",
        bundle(both, Collections.singletonList(ragged)).failures.get(0).getString("message"));
  }

  @Test
  public void elementsAreWrittenAsPythonsJsonDumpsWritesThem() {
    assertEquals("1.0", Json.pythonFloat(1.0));
    assertEquals("-2.5", Json.pythonFloat(-2.5));
    assertEquals("0.0001", Json.pythonFloat(0.0001));
    assertEquals("1e-05", Json.pythonFloat(0.00001));
    assertEquals("1.5e-07", Json.pythonFloat(1.5e-7));
    assertEquals("1234567.0", Json.pythonFloat(1234567.0));
    assertEquals("1e+16", Json.pythonFloat(1e16));
    assertEquals("1.2345678901234568e+17", Json.pythonFloat(123456789012345678.0));
    assertEquals("0.1", Json.pythonFloat(0.1));
    assertEquals("-0.0", Json.pythonFloat(-0.0));
    assertEquals("NaN", Json.pythonFloat(Double.NaN));
    assertEquals("-Infinity", Json.pythonFloat(Double.NEGATIVE_INFINITY));
    assertEquals("[\"NaN\", \"Infinity\", 1.0]", Json.python(Arrays.asList(Double.NaN, Double.POSITIVE_INFINITY, 1.0)));
    assertEquals("[\"caf\\u00e9\", \"a\\\"b\", \"0aff\", true]",
        Json.python(Arrays.asList("café", "a\"b", new byte[] {0x0a, (byte) 0xff}, true)));
    assertEquals("\"it's\"", PackBlocks.pyRepr("it's"));
    assertEquals("'pixels'", PackBlocks.pyRepr("pixels"));
  }

  // --- Round trips on the DirectRunner ---------------------------------------------------------

  /**
   * A Java stand-in for the Python block composite: one result block per input block, model
   * {@code m}; the inference follows from the features (VECTOR: the features; NUMBER: their sum;
   * INTEGER: the first, as an integer; LABEL: "L" and the first).
   */
  private static final class FakePythonBlocks extends DoFn<Row, Row> {
    private final Schema resultSchema;
    private final InferenceKind kind;
    private final int passthrough;

    FakePythonBlocks(Schema resultSchema, InferenceKind kind, int passthrough) {
      this.resultSchema = resultSchema;
      this.kind = kind;
      this.passthrough = passthrough;
    }

    @ProcessElement
    public void processElement(@Element Row block, OutputReceiver<Row> out) {
      List<Object> keys = block.getValue("key");
      int rows = keys.size();
      int count = block.getInt32("feature_count");
      ByteBuffer features = ByteBuffer.wrap(block.getBytes("features")).order(ByteOrder.LITTLE_ENDIAN);
      Object inference;
      int width = 1;
      if (kind == InferenceKind.VECTOR) {
        inference = block.getBytes("features");
        width = count;
      } else if (kind == InferenceKind.LABEL) {
        List<String> labels = new ArrayList<>();
        for (int r = 0; r < rows; r++) {
          labels.add("L" + features.getDouble(r * count * 8));
        }
        inference = labels;
      } else {
        ByteBuffer result = ByteBuffer.allocate(rows * 8).order(ByteOrder.LITTLE_ENDIAN);
        for (int r = 0; r < rows; r++) {
          double sum = 0;
          for (int f = 0; f < count; f++) {
            sum += features.getDouble((r * count + f) * 8);
          }
          if (kind == InferenceKind.NUMBER) {
            result.putDouble(sum);
          } else {
            result.putLong((long) features.getDouble(r * count * 8));
          }
        }
        inference = result.array();
      }
      List<Object> values = new ArrayList<>(Arrays.<Object>asList(keys, inference, width, "m"));
      for (int p = 0; p < passthrough; p++) {
        values.add(block.getValue(3 + p));
      }
      out.output(Row.withSchema(resultSchema).addValues(values).build());
    }
  }

  /** Pack, the stand-in, unpack: the inference Rows, and the packer's failures checked against {@code failures}. */
  private PCollection<Row> roundTrip(
      List<Row> rows, String key, InferenceKind kind, int rowsPerBlock, List<String> passthrough, List<Row> failures) {
    PackBlocks pack = new PackBlocks(INPUT, key, Collections.singletonList("pixels"), passthrough, rowsPerBlock, BLOCKS, FAILURES);
    PCollectionTuple packed =
        pipeline
            .apply(Create.of(rows).withRowSchema(INPUT))
            .apply("Pack", ParDo.of(pack).withOutputTags(BLOCKS, TupleTagList.of(FAILURES)));
    PCollection<Row> packFailures = packed.get(FAILURES).setRowSchema(Inference.FAILURE_SCHEMA);
    PAssert.that(packFailures).containsInAnyOrder(failures);
    Schema resultSchema = Blocks.resultSchema(INPUT, key, kind, passthrough);
    Schema output = Blocks.unpackedSchema(INPUT, key, kind, passthrough);
    PCollection<Row> results = packed.get(BLOCKS).setRowSchema(pack.blockSchema())
        .apply("Python", ParDo.of(new FakePythonBlocks(resultSchema, kind, passthrough.size())))
        .setRowSchema(resultSchema);
    PAssert.that(results).satisfies(blocks -> {
      for (Row block : blocks) {
        assertTrue(block.getArray("key").size() <= rowsPerBlock);
      }
      return null;
    });
    TypeName keyType = INPUT.getField(key).getType().getTypeName();
    return results
        .apply("Unpack", ParDo.of(new UnpackBlocks(resultSchema, output, kind, keyType, passthrough, "localhost:1")))
        .setRowSchema(output);
  }

  @Test
  public void vectorsRoundTripWithStringKeysAndPassthroughValues() {
    List<String> passthrough = Arrays.asList("label", "note", "n");
    Schema output = Blocks.unpackedSchema(INPUT, "id", InferenceKind.VECTOR, passthrough);
    List<Row> rows = rows(2500);
    List<Row> expected = new ArrayList<>();
    for (Row row : rows) {
      expected.add(Row.withSchema(output)
          .addValues(row.getString("id"), row.getArray("pixels"), "m", row.getInt64("label"), row.getString("note"), row.getInt32("n"))
          .build());
    }
    Row bad = row(null, 9, Arrays.asList(1.0));
    List<Row> inputs = new ArrayList<>(rows);
    inputs.add(bad);
    PCollection<Row> out = roundTrip(inputs, "id", InferenceKind.VECTOR, 1000, passthrough, Collections.singletonList(
        Row.withSchema(Inference.FAILURE_SCHEMA)
            .addValues("input", null, "ValueError", "key_field 'id' is null", Json.row(bad), null, null)
            .build()));
    PAssert.that(out).containsInAnyOrder(expected);
    pipeline.run().waitUntilFinish();
  }

  @Test
  public void integerKeysComeBackInTheirInputType() {
    Schema output = Blocks.unpackedSchema(INPUT, "n", InferenceKind.NUMBER, Collections.<String>emptyList());
    assertEquals(FieldType.INT32, output.getField("key").getType()); // nullable in the input; never null here
    List<Row> expected = new ArrayList<>();
    for (int i = 0; i < 50; i++) {
      expected.add(Row.withSchema(output).addValues(i, i + 0.5, "m").build()); // i + (i + 0.5) - i
    }
    PAssert.that(roundTrip(rows(50), "n", InferenceKind.NUMBER, 7, Collections.<String>emptyList(),
        Collections.<Row>emptyList())).containsInAnyOrder(expected);
    pipeline.run().waitUntilFinish();
  }

  @Test
  public void int16KeysIntegerAndLabelInferencesRoundTrip() {
    Schema integers = Blocks.unpackedSchema(INPUT, "small", InferenceKind.INTEGER, Collections.singletonList("id"));
    assertEquals(FieldType.INT16, integers.getField("key").getType());
    List<Row> rows = rows(30);
    List<Row> expected = new ArrayList<>();
    for (int i = 0; i < 30; i++) {
      expected.add(Row.withSchema(integers).addValues((short) i, (long) i, "m", "k" + i).build());
    }
    PAssert.that(roundTrip(rows, "small", InferenceKind.INTEGER, 4, Collections.singletonList("id"),
        Collections.<Row>emptyList())).containsInAnyOrder(expected);
    pipeline.run().waitUntilFinish();
  }

  @Test
  public void labelsRoundTrip() {
    Schema labels = Blocks.unpackedSchema(INPUT, "id", InferenceKind.LABEL, Collections.<String>emptyList());
    assertEquals(FieldType.STRING, labels.getField("inference").getType());
    List<Row> expected = new ArrayList<>();
    for (int i = 0; i < 20; i++) {
      expected.add(Row.withSchema(labels).addValues("k" + i, "L" + (double) i, "m").build());
    }
    PAssert.that(roundTrip(rows(20), "id", InferenceKind.LABEL, 6, Collections.<String>emptyList(),
        Collections.<Row>emptyList())).containsInAnyOrder(expected);
    pipeline.run().waitUntilFinish();
  }

  @Test
  public void unpackingKeepsTheOrderAndRejectsMalformedBlocks() {
    Schema resultSchema = Blocks.resultSchema(INPUT, "id", InferenceKind.NUMBER, Collections.singletonList("note"));
    assertEquals(
        Arrays.asList("key", "inference", "inference_width", "model_id", "note"), resultSchema.getFieldNames());
    assertEquals(FieldType.BYTES, resultSchema.getField("inference").getType());
    assertEquals(FieldType.array(FieldType.STRING.withNullable(true)), resultSchema.getField("note").getType());
    Schema output = Blocks.unpackedSchema(INPUT, "id", InferenceKind.NUMBER, Collections.singletonList("note"));
    UnpackBlocks unpack = new UnpackBlocks(
        resultSchema, output, InferenceKind.NUMBER, TypeName.STRING, Collections.singletonList("note"), "localhost:1");
    ByteBuffer numbers = ByteBuffer.allocate(24).order(ByteOrder.LITTLE_ENDIAN).putDouble(1.5).putDouble(-2).putDouble(3e100);
    Row block = Row.withSchema(resultSchema)
        .addValues(Arrays.asList("x", "y", "z"), numbers.array(), 1, "m1", Arrays.asList("a", null, "c"))
        .build();
    List<Row> out = unpackAll(unpack, block);
    assertEquals(Arrays.asList(
        Row.withSchema(output).addValues("x", 1.5, "m1", "a").build(),
        Row.withSchema(output).addValues("y", -2.0, "m1", null).build(),
        Row.withSchema(output).addValues("z", 3e100, "m1", "c").build()), out);

    Row short1 = Row.withSchema(resultSchema)
        .addValues(Arrays.asList("x", "y", "z"), new byte[16], 1, "m1", Arrays.asList("a", null, "c"))
        .build();
    assertEquals(
        "Inference: the expansion service at localhost:1 returned a malformed result block (model_id m1): its "
            + "inference has 16 bytes; 3 keys x 1 values x 8 bytes are 24; the service and this library are "
            + "different InferBridge versions",
        assertThrows(IllegalStateException.class, () -> unpackAll(unpack, short1)).getMessage());
    Row wide = Row.withSchema(resultSchema)
        .addValues(Arrays.asList("x"), new byte[16], 2, "m1", Arrays.asList("a"))
        .build();
    assertTrue(assertThrows(IllegalStateException.class, () -> unpackAll(unpack, wide)).getMessage()
        .contains("its inference_width is 2, expected 1 for a number inference"));
  }

  private static List<Row> unpackAll(UnpackBlocks unpack, Row block) {
    List<Row> out = new ArrayList<>();
    unpack.processElement(block, new DoFn.OutputReceiver<Row>() {
      @Override
      public void output(Row row) {
        out.add(row);
      }

      @Override
      public void outputWithTimestamp(Row row, Instant timestamp) {
        throw new AssertionError();
      }
    });
    return out;
  }

  // --- Construction ----------------------------------------------------------------------------

  private static final Inference PROBA =
      Inference.of(SklearnModel.pickle("/m.pkl").withOutput(ModelOutput.PREDICT_PROBA))
          .withKeyField("id")
          .withFeatureField("pixels");

  private static Pipeline constructionOnly() {
    PipelineOptions options = PipelineOptionsFactory.create();
    options.setRunner(CrashingRunner.class);
    return Pipeline.create(options);
  }

  private static PCollection<Row> input(Pipeline p) {
    return p.apply(Create.of(row(1)).withRowSchema(INPUT));
  }

  @Test
  public void withBlockSizeTakesOneToAMillionRows() {
    for (int bad : new int[] {0, -5, 1_000_001, Integer.MIN_VALUE}) {
      assertEquals(
          "withBlockSize(" + bad + "): rowsPerBlock must be between 1 and 1000000",
          assertThrows(IllegalArgumentException.class, () -> PROBA.withBlockSize(bad)).getMessage());
    }
    assertEquals(Integer.valueOf(1), PROBA.withBlockSize(1).blockSize());
    assertEquals(Integer.valueOf(1_000_000), PROBA.withBlockSize(1_000_000).blockSize());
    assertNull(PROBA.blockSize());
  }

  @Test
  public void outputSchemaWithBlocksHasNoExample() {
    Schema rowPath = PROBA.withPassthroughFields("label", "note").outputSchema(INPUT);
    Schema blocks = PROBA.withPassthroughFields("label", "note").withBlockSize(100).outputSchema(INPUT);
    assertEquals(Arrays.asList("key", "example", "inference", "model_id", "label", "note"), rowPath.getFieldNames());
    assertEquals(Arrays.asList("key", "inference", "model_id", "label", "note"), blocks.getFieldNames());
    assertEquals(FieldType.STRING, blocks.getField("key").getType());
    assertEquals(FieldType.array(FieldType.DOUBLE), blocks.getField("inference").getType());
    assertEquals(FieldType.STRING, blocks.getField("model_id").getType());
    assertEquals(FieldType.INT64.withNullable(true), blocks.getField("label").getType());
    assertEquals(FieldType.INT32, PROBA.withKeyField("n").withBlockSize(5).outputSchema(INPUT).getField("key").getType());
    assertEquals(FieldType.INT64, PROBA.withKeyField("n").outputSchema(INPUT).getField("key").getType());
    assertEquals(FieldType.INT64,
        PROBA.withPostprocess(Step.argmax()).withBlockSize(5).outputSchema(INPUT).getField("inference").getType());
    assertEquals(FieldType.STRING,
        PROBA.withPostprocess(Step.argmax(), Step.labels("a", "b")).withBlockSize(5).outputSchema(INPUT)
            .getField("inference").getType());
    assertEquals(FieldType.DOUBLE,
        Inference.of(SklearnModel.pickle("/m.pkl")).withKeyField("id").withFeatureField("pixels").withBlockSize(5)
            .outputSchema(INPUT).getField("inference").getType());
  }

  @Test
  public void mapInferencesNeedTheRowPath() {
    Inference topK = PROBA.withPostprocess(Step.topK(2)).withBlockSize(100).withExpansionService("localhost:1");
    String message = assertThrows(IllegalArgumentException.class, () -> input(constructionOnly()).apply(topK)).getMessage();
    assertEquals(
        "Inference: withBlockSize(100) cannot carry an inference of kind map (MAP<STRING, DOUBLE>, from the "
            + "postprocessing step 'top_k'); blocks carry vector, number, integer and label inferences; remove "
            + "withBlockSize() to use the row path, which carries every kind",
        message);
    assertEquals(message, assertThrows(IllegalArgumentException.class, () -> topK.outputSchema(INPUT)).getMessage());
    assertEquals(
        "Inference: withPassthroughFields(\"features\") clashes with a field of the blocks of withBlockSize(100): key, "
            + "features, feature_count, inference, inference_width, model_id; rename the input field, or remove "
            + "withBlockSize() to use the row path",
        assertThrows(IllegalArgumentException.class, () -> PROBA.withPassthroughFields("features").withBlockSize(100)
            .outputSchema(Schema.builder().addFields(INPUT.getFields()).addInt32Field("features").build())).getMessage());
  }

  @Test
  public void blocksGoToTheBlocksUrnWithTheSameConfigurationAndComeBackUnpacked() throws Exception {
    Pipeline p = constructionOnly();
    Inference inference =
        PROBA.withPostprocess(Step.argmax()).withPassthroughFields("label").withBlockSize(500).withExpansionService("localhost:1");
    Schema resultSchema = Blocks.resultSchema(INPUT, "id", InferenceKind.INTEGER, Collections.singletonList("label"));
    FakeExpansionService service = FakeExpansionService.returning(resultSchema, Inference.FAILURE_SCHEMA);
    InferenceResult result = input(p).apply(inference.withExpansionClient(service));

    RunnerApi.PTransform transform = service.request.getTransform();
    assertEquals("beam:transform:inferbridge:run_inference_blocks:v1", transform.getSpec().getUrn());
    assertEquals(InferenceConfig.RUN_INFERENCE_BLOCKS_URN, transform.getSpec().getUrn());
    ExternalConfigurationPayload payload = ExternalConfigurationPayload.parseFrom(transform.getSpec().getPayload());
    Row config = RowCoder.of(SchemaTranslation.schemaFromProto(payload.getSchema()))
        .decode(new ByteArrayInputStream(payload.getPayload().toByteArray()));
    assertEquals(InferenceConfig.toRow(inference), config);
    // The same configuration as the row path's: the block size is not part of it.
    assertEquals(InferenceConfig.toRow(inference.withBlockSize(1)), config);
    assertEquals(InferenceConfig.SCHEMA.getFieldNames(), config.getSchema().getFieldNames());
    String blocksId = transform.getInputsMap().values().iterator().next();
    RunnerApi.Components components = service.request.getComponents();
    RunnerApi.Coder coder = components.getCodersOrThrow(components.getPcollectionsOrThrow(blocksId).getCoderId());
    assertEquals("beam:coder:row:v1", coder.getSpec().getUrn());
    Schema sent = SchemaTranslation.schemaFromProto(SchemaApi.Schema.parseFrom(coder.getSpec().getPayload()));
    assertEquals(Arrays.asList("key", "features", "feature_count", "label"), sent.getFieldNames());
    assertTrue(sent.equivalent(Blocks.inputSchema(INPUT, "id", Collections.singletonList("label"))));

    assertTrue(result.getInferences().getSchema().equivalent(inference.outputSchema(INPUT)));
    assertEquals(Arrays.asList("key", "inference", "model_id", "label"), result.getInferences().getSchema().getFieldNames());
    assertTrue(result.getFailures().getSchema().equivalent(Inference.FAILURE_SCHEMA));

    Pipeline q = constructionOnly();
    FakeExpansionService wrong = FakeExpansionService.returning(inference.outputSchema(INPUT), Inference.FAILURE_SCHEMA);
    String error = assertThrows(IllegalStateException.class,
        () -> input(q).apply(inference.withExpansionClient(wrong))).getMessage();
    assertTrue(error, error.startsWith("Inference: the expansion service at localhost:1 returned inferences Rows of schema "));
  }

  @Test
  public void failuresOfTheServiceAndThePackerAreOnePCollection() {
    Pipeline p = constructionOnly();
    Inference inference = PROBA.withBlockSize(10).withExpansionService("localhost:1");
    Schema resultSchema = Blocks.resultSchema(INPUT, "id", InferenceKind.VECTOR, Collections.<String>emptyList());
    InferenceResult result =
        input(p).apply(inference.withExpansionClient(FakeExpansionService.returning(resultSchema, Inference.FAILURE_SCHEMA)));
    Set<String> names = new HashSet<>();
    p.traverseTopologically(new Pipeline.PipelineVisitor.Defaults() {
      @Override
      public CompositeBehavior enterCompositeTransform(org.apache.beam.sdk.runners.TransformHierarchy.Node node) {
        names.add(node.getFullName());
        return CompositeBehavior.ENTER_TRANSFORM;
      }

      @Override
      public void visitPrimitiveTransform(org.apache.beam.sdk.runners.TransformHierarchy.Node node) {
        names.add(node.getFullName());
      }
    });
    Collection<String> expected = Arrays.asList(
        "Inference/PackBlocks", "Inference/RunInferenceBlocks", "Inference/UnpackBlocks", "Inference/Failures");
    for (String name : expected) {
      assertTrue(name + " in " + names, names.stream().anyMatch(n -> n.startsWith(name)));
    }
    assertTrue(result.getFailures().getSchema().equivalent(Inference.FAILURE_SCHEMA));
  }
}
