package dev.inferbridge;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.coders.Coder;
import org.apache.beam.sdk.coders.RowCoder;
import org.apache.beam.sdk.coders.SerializableCoder;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.transforms.DoFn;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TupleTag;
import org.junit.Test;

/**
 * The block-level Java API ({@link Inference#overBlocks}): {@link FeatureBlock}'s checks, its
 * block Rows in the packed wire form, and the construction-time checks. None of these needs
 * Python; {@code tests/xlang} runs the path end to end through the expansion service.
 */
public class FeatureBlockTest {
  private static final TupleTag<Row> BLOCKS = new TupleTag<Row>("blocks") {};
  private static final TupleTag<Row> FAILURES = new TupleTag<Row>("failures") {};

  private static final class Emitted {
    final List<Row> blocks = new ArrayList<>();
    final List<Row> failures = new ArrayList<>();
  }

  private static Emitted convert(FeatureBlock.KeyType keyType, FeatureBlock block) {
    Schema blockSchema = Blocks.inputSchema(FeatureBlockRows.rowSchema(keyType), Blocks.KEY, Collections.emptyList());
    Emitted emitted = new Emitted();
    new FeatureBlockRows(blockSchema, keyType, BLOCKS, FAILURES)
        .processElement(block, new DoFn.MultiOutputReceiver() {
          @Override
          @SuppressWarnings("unchecked")
          public <T> DoFn.OutputReceiver<T> get(TupleTag<T> tag) {
            return new DoFn.OutputReceiver<T>() {
              @Override
              public void output(T output) {
                (tag.equals(BLOCKS) ? emitted.blocks : emitted.failures).add((Row) output);
              }

              @Override
              public void outputWithTimestamp(T output, org.joda.time.Instant at) {
                throw new AssertionError("blocks keep their element's timestamp");
              }
            };
          }

          @Override
          public <T> DoFn.OutputReceiver<Row> getRowReceiver(TupleTag<T> tag) {
            throw new UnsupportedOperationException();
          }
        });
    return emitted;
  }

  private static double featureAt(Row block, int row, int feature) {
    int count = block.getInt32(Blocks.FEATURE_COUNT);
    return ByteBuffer.wrap(block.getBytes(Blocks.FEATURES)).order(ByteOrder.LITTLE_ENDIAN).getDouble((row * count + feature) * 8);
  }

  @Test
  public void aBlockBecomesOneBlockRowOfThePackedWireForm() {
    double[] features = {0.5, -1.0, 2.0, 3.25, 4.0, 1e300};
    Row block = convert(FeatureBlock.KeyType.INT64, FeatureBlock.of(new long[] {7, -8, 9}, features, 2)).blocks.get(0);
    // What PackBlocks sends for Rows with an integer key: the Python side reads one wire form.
    assertEquals(
        Blocks.inputSchema(
            Schema.builder().addInt64Field("id").addArrayField("x", FieldType.DOUBLE).build(), "id", Collections.emptyList()),
        block.getSchema());
    assertEquals(Arrays.asList(7L, -8L, 9L), new ArrayList<>(block.getArray(Blocks.KEY)));
    assertEquals(2, (int) block.getInt32(Blocks.FEATURE_COUNT));
    assertEquals(6 * 8, block.getBytes(Blocks.FEATURES).length);
    for (int i = 0; i < 6; i++) {
      assertEquals(features[i], featureAt(block, i / 2, i % 2), 0);
    }

    Row strings = convert(FeatureBlock.KeyType.STRING, FeatureBlock.of(new String[] {"a", "b"}, new double[] {1, 2}, 1)).blocks.get(0);
    assertEquals(FieldType.array(FieldType.STRING), strings.getSchema().getField(Blocks.KEY).getType());
    assertEquals(Arrays.asList("a", "b"), strings.getArray(Blocks.KEY));
  }

  @Test
  public void aBlockRowRoundTripsThroughItsRowCoder() throws Exception {
    Row block = convert(FeatureBlock.KeyType.INT64, FeatureBlock.of(new long[] {1, 2}, new double[] {0.1, 0.2, 0.3, 0.4}, 2)).blocks.get(0);
    RowCoder coder = RowCoder.of(block.getSchema());
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    coder.encode(block, out);
    Row decoded = coder.decode(new ByteArrayInputStream(out.toByteArray()));
    assertEquals(Arrays.asList(1L, 2L), new ArrayList<>(decoded.getArray(Blocks.KEY)));
    assertEquals(0.4, featureAt(decoded, 1, 1), 0);
  }

  @Test
  public void blocksHaveADefaultCoderThatKeepsThem() throws Exception {
    FeatureBlock block = FeatureBlock.of(new String[] {"a", "b"}, new double[] {1.5, Double.NaN}, 1);
    Coder<FeatureBlock> coder = Pipeline.create().getCoderRegistry().getCoder(FeatureBlock.class);
    assertTrue(coder instanceof SerializableCoder);
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    coder.encode(block, out);
    assertEquals(block, coder.decode(new ByteArrayInputStream(out.toByteArray())));
  }

  @Test
  public void aBlockWithTheOtherKeyTypeFailsEachOfItsRowsNamingBothTypes() {
    Emitted emitted = convert(FeatureBlock.KeyType.INT64, FeatureBlock.of(new String[] {"a", "b"}, new double[] {1, 2, 3, 4}, 2));
    assertTrue(emitted.blocks.isEmpty());
    assertEquals(2, emitted.failures.size());
    Row failure = emitted.failures.get(1);
    assertEquals(Inference.FAILURE_SCHEMA, failure.getSchema());
    assertEquals("input", failure.getString("stage"));
    assertEquals("b", failure.getString("key"));
    assertEquals(
        "the block's keys are STRING; this overBlocks(INT64) takes INT64 keys (one key type per transform)",
        failure.getString("message"));
    assertEquals("{\"key\": \"b\", \"features\": [3.0, 4.0]}", failure.getString("element"));
  }

  @Test
  public void malformedBlocksAreRefusedWhenMade() {
    assertEquals(
        "FeatureBlock.of(): 5 features for 2 rows of 2 features; expected 4 (row-major, one row after another)",
        assertThrows(IllegalArgumentException.class, () -> FeatureBlock.of(new long[] {1, 2}, new double[5], 2)).getMessage());
    assertEquals(
        "FeatureBlock.of(): featureCount is 0; allowed: at least 1 feature per row",
        assertThrows(IllegalArgumentException.class, () -> FeatureBlock.of(new long[] {1}, new double[0], 0)).getMessage());
    assertEquals(
        "FeatureBlock.of(): 0 keys; a block holds 1 to 1000000 rows",
        assertThrows(IllegalArgumentException.class, () -> FeatureBlock.of(new long[0], new double[0], 1)).getMessage());
    assertEquals(
        "FeatureBlock.of(): keys[1] is null; every row needs a key",
        assertThrows(IllegalArgumentException.class, () -> FeatureBlock.of(new String[] {"a", null}, new double[2], 1)).getMessage());
    assertEquals(
        "FeatureBlock.of(): features must not be null",
        assertThrows(IllegalArgumentException.class, () -> FeatureBlock.of(new long[] {1}, null, 1)).getMessage());
  }

  @Test
  public void overBlocksRefusesTheRowSettingsAndInferencesBlocksCannotCarry() {
    Inference inference = Inference.of(SklearnModel.pickle("/models/m.pkl"));
    assertEquals(FeatureBlock.KeyType.STRING, inference.overBlocks(FeatureBlock.KeyType.STRING).keyType());
    String rowSettings =
        assertThrows(IllegalArgumentException.class, () -> inference.withKeyField("id").overBlocks(FeatureBlock.KeyType.INT64))
            .getMessage();
    assertTrue(rowSettings, rowSettings.startsWith("Inference: overBlocks(INT64): a FeatureBlock carries its own keys and features; remove withKeyField()"));
    assertThrows(IllegalArgumentException.class, () -> inference.withBlockSize(10).overBlocks(FeatureBlock.KeyType.INT64));
    assertThrows(IllegalArgumentException.class, () -> inference.overBlocks(null));
    String map =
        assertThrows(
                IllegalArgumentException.class,
                () -> Inference.of(SklearnModel.pickle("/models/m.pkl").withOutput(ModelOutput.PREDICT_PROBA))
                    .withPostprocess(Step.topK(2, "a", "b"))
                    .overBlocks(FeatureBlock.KeyType.INT64))
            .getMessage();
    assertTrue(map, map.startsWith("Inference: overBlocks(INT64) cannot carry an inference of kind map"));
    assertTrue(map, map.endsWith("end the postprocessing with a step that gives one of these"));
  }
}
