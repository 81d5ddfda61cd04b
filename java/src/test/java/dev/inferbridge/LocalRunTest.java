package dev.inferbridge;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.Map;
import java.util.function.Function;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;
import org.apache.beam.model.fnexecution.v1.BeamFnApi.StopWorkerRequest;
import org.apache.beam.model.fnexecution.v1.BeamFnApi.StopWorkerResponse;
import org.apache.beam.model.fnexecution.v1.BeamFnExternalWorkerPoolGrpc;
import org.apache.beam.runners.portability.PortableRunner;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.options.ExperimentalOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.options.PortablePipelineOptions;
import org.apache.beam.sdk.testing.CrashingRunner;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.ManagedChannel;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.ManagedChannelBuilder;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.StatusRuntimeException;
import org.junit.Test;
import org.junit.function.ThrowingRunnable;

/** {@link LocalRun}: the options it sets, its errors, and the worker pool it serves. */
public class LocalRunTest {
  private static final String JOBS = "localhost:8099";

  private static PortablePipelineOptions options(String... args) {
    return PipelineOptionsFactory.fromArgs(args).as(PortablePipelineOptions.class);
  }

  private static Function<String, String> env(String... nameValues) {
    Map<String, String> env = new HashMap<>();
    for (int i = 0; i < nameValues.length; i += 2) {
      env.put(nameValues[i], nameValues[i + 1]);
    }
    return env::get;
  }

  private static String message(Class<? extends Throwable> type, ThrowingRunnable r) {
    return assertThrows(type, r).getMessage();
  }

  private static void assertContains(String text, String... parts) {
    for (String part : parts) {
      assertTrue("expected \"" + part + "\" in: " + text, text.contains(part));
    }
  }

  @Test
  public void theEnvironmentNamesTheJobServiceAndThisJvmServesTheJavaWorkers() throws Exception {
    // The test classpath has the DirectRunner, Beam's default: the local run replaces it.
    PortablePipelineOptions options = options();
    try (LocalRun local = LocalRun.start(options, env(LocalRun.JOB_ENDPOINT_ENV, " " + JOBS + " "))) {
      assertEquals(PortableRunner.class, options.getRunner());
      assertEquals(JOBS, options.getJobEndpoint());
      assertEquals("EXTERNAL", options.getDefaultEnvironmentType());
      // Nothing staged: the Java stages run in this JVM.
      assertEquals(Collections.emptyList(), options.getFilesToStage());
      // Data messages large enough for big bundles on Flink.
      assertEquals(
          "4000000",
          ExperimentalOptions.getExperimentValue(options.as(ExperimentalOptions.class), "data_buffer_size_limit"));
      // The harness's report of the channels it leaves open is dropped.
      LogRecord report = new LogRecord(Level.SEVERE, "Previous channel was garbage collected without being shut down!");
      assertFalse(Logger.getLogger("org.apache.beam.vendor.grpc.v1p69p0.io.grpc.internal.ManagedChannelOrphanWrapper")
          .getFilter().isLoggable(report));
      // The runner accepts the options.
      Pipeline.create(options);
      // A real call to the worker pool (stopping an unknown worker is a no-op for thread workers).
      ManagedChannel channel =
          ManagedChannelBuilder.forTarget(options.getDefaultEnvironmentConfig()).usePlaintext().build();
      try {
        StopWorkerResponse response =
            BeamFnExternalWorkerPoolGrpc.newBlockingStub(channel)
                .stopWorker(StopWorkerRequest.newBuilder().setWorkerId("none").build());
        assertEquals("", response.getError());
      } finally {
        channel.shutdownNow();
      }
    }
  }

  @Test
  public void argumentsMayBoundFlinkBundles() {
    LocalRun.FlinkBundleOptions options =
        PipelineOptionsFactory.fromArgs(
                LocalRun.withDefaults(new String[] {"--maxBundleSize=20"}, env(LocalRun.JOB_ENDPOINT_ENV, JOBS)))
            .as(LocalRun.FlinkBundleOptions.class);
    assertEquals(Long.valueOf(20), options.getMaxBundleSize());
  }

  @Test
  public void closeStopsTheWorkerPool() throws Exception {
    PortablePipelineOptions options = options();
    LocalRun.start(options, env(LocalRun.JOB_ENDPOINT_ENV, JOBS)).close();
    ManagedChannel channel =
        ManagedChannelBuilder.forTarget(options.getDefaultEnvironmentConfig()).usePlaintext().build();
    try {
      assertThrows(
          StatusRuntimeException.class,
          () -> BeamFnExternalWorkerPoolGrpc.newBlockingStub(channel).stopWorker(StopWorkerRequest.getDefaultInstance()));
    } finally {
      channel.shutdownNow();
    }
  }

  @Test
  public void givenOptionsWinOverTheEnvironment() throws Exception {
    PortablePipelineOptions options =
        options(
            "--runner=PortableRunner", "--jobEndpoint=jobs.internal:8099", "--filesToStage=/opt/extra.jar",
            "--experiments=data_buffer_size_limit=4000000");
    try (LocalRun local = LocalRun.start(options, env(LocalRun.JOB_ENDPOINT_ENV, JOBS))) {
      assertEquals(PortableRunner.class, options.getRunner());
      assertEquals("jobs.internal:8099", options.getJobEndpoint());
      assertEquals(Collections.singletonList("/opt/extra.jar"), options.getFilesToStage());
      assertEquals(
          Collections.singletonList("data_buffer_size_limit=4000000"), options.as(ExperimentalOptions.class).getExperiments());
    }
  }

  @Test
  public void noJobServiceSaysHowToGiveOne() {
    for (String unset : new String[] {null, "", "  "}) {
      String message =
          message(
              IllegalArgumentException.class,
              () -> LocalRun.start(options(), name -> unset).close());
      assertContains(
          message,
          "LocalRun.start(): no job service",
          "inferbridge-local -- <command>",
          "$INFERBRIDGE_JOB_ENDPOINT=host:port",
          "--jobEndpoint=host:port");
    }
  }

  @Test
  public void aMalformedEnvironmentValueIsNamed() {
    String message =
        message(
            IllegalStateException.class,
            () -> LocalRun.start(options(), env(LocalRun.JOB_ENDPOINT_ENV, "http://localhost")).close());
    assertContains(message, "$INFERBRIDGE_JOB_ENDPOINT must be host:port", "got \"http://localhost\"");
  }

  @Test
  public void withDefaultsLetsPortableOptionsPassValidation() {
    String[] args = LocalRun.withDefaults(new String[] {"--jobName=digits"}, env(LocalRun.JOB_ENDPOINT_ENV, JOBS));
    assertEquals(Arrays.asList("--jobName=digits", "--runner=PortableRunner", "--jobEndpoint=" + JOBS), Arrays.asList(args));
    PortablePipelineOptions options =
        PipelineOptionsFactory.fromArgs(args).withValidation().as(PortablePipelineOptions.class);
    assertEquals(PortableRunner.class, options.getRunner());
    assertEquals(JOBS, options.getJobEndpoint());
  }

  @Test
  public void withDefaultsKeepsWhatIsGiven() {
    String[] given = {"--runner=FlinkRunner", "--jobEndpoint=jobs.internal:8099"};
    assertEquals(Arrays.asList(given), Arrays.asList(LocalRun.withDefaults(given, env())));
  }

  @Test
  public void withDefaultsReportsAMissingOrMalformedJobService() {
    assertContains(
        message(IllegalArgumentException.class, () -> LocalRun.withDefaults(new String[0], env())),
        "LocalRun.withDefaults(): no job service",
        "inferbridge-local -- <command>");
    assertContains(
        message(
            IllegalStateException.class,
            () -> LocalRun.withDefaults(new String[0], env(LocalRun.JOB_ENDPOINT_ENV, "8099"))),
        "$INFERBRIDGE_JOB_ENDPOINT must be host:port",
        "got \"8099\"");
  }

  @Test
  public void anotherRunnerIsAnError() {
    PortablePipelineOptions options = options();
    options.setRunner(CrashingRunner.class);
    String message =
        message(
            IllegalArgumentException.class,
            () -> LocalRun.start(options, env(LocalRun.JOB_ENDPOINT_ENV, JOBS)).close());
    assertContains(message, "needs --runner=PortableRunner", "got --runner=CrashingRunner");
  }
}
