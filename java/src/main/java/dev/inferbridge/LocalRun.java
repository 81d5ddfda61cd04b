package dev.inferbridge;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.function.Function;
import java.util.logging.Logger;
import org.apache.beam.fn.harness.ExternalWorkerService;
import org.apache.beam.model.fnexecution.v1.BeamFnApi.StartWorkerRequest;
import org.apache.beam.model.fnexecution.v1.BeamFnApi.StartWorkerResponse;
import org.apache.beam.model.fnexecution.v1.BeamFnApi.StopWorkerRequest;
import org.apache.beam.model.fnexecution.v1.BeamFnApi.StopWorkerResponse;
import org.apache.beam.model.fnexecution.v1.BeamFnExternalWorkerPoolGrpc.BeamFnExternalWorkerPoolImplBase;
import org.apache.beam.runners.portability.PortableRunner;
import org.apache.beam.sdk.PipelineRunner;
import org.apache.beam.sdk.fn.server.FnService;
import org.apache.beam.sdk.fn.server.GrpcFnServer;
import org.apache.beam.sdk.fn.server.ServerFactory;
import org.apache.beam.sdk.options.Default;
import org.apache.beam.sdk.options.ExperimentalOptions;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.options.PortablePipelineOptions;
import org.apache.beam.sdk.util.construction.PipelineOptionsTranslation;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.internal.ManagedChannelImplBuilder;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.stub.StreamObserver;

/**
 * Runs a Java pipeline that uses InferBridge on this machine, without Docker: a portable job
 * service runs the pipeline, its Java stages run in this JVM, and its Python stages in the
 * InferBridge expansion service's worker pool.
 *
 * <pre>{@code
 * // inferbridge-local -- java -cp ... MyPipeline --dataDir=...
 * MyOptions options =
 *     PipelineOptionsFactory.fromArgs(LocalRun.withDefaults(args)).withValidation().as(MyOptions.class);
 * try (LocalRun local = LocalRun.start(options)) {
 *   Pipeline pipeline = Pipeline.create(options);
 *   pipeline.apply(...).apply(Inference.of(model).withFeatureFields("pixels"));
 *   pipeline.run().waitUntilFinish();
 * }
 * }</pre>
 *
 * <p>{@link #start} sets {@code options} up for the job service:
 *
 * <ul>
 *   <li>the runner: {@code PortableRunner}. Beam's default, the DirectRunner, is replaced (it cannot
 *       run the Python stages); any other runner is an error;
 *   <li>the job service: {@code --jobEndpoint} when given, else {@value #JOB_ENDPOINT_ENV}, which
 *       {@code inferbridge-local -- <command>} sets next to {@value Inference#EXPANSION_SERVICE_ENV}
 *       (a Flink job server started by {@code scripts/flink-local} works the same way);
 *   <li>the Java environment: {@code EXTERNAL}, a worker pool served by this JVM until {@link
 *       #close()};
 *   <li>the files to stage: none, unless {@code --filesToStage} is given. The Java stages run in
 *       this JVM, which has their classes; Beam would otherwise upload the whole classpath (tens
 *       of megabytes) and leave a zip of each classes directory in the temporary directory;
 *   <li>the Java workers' data messages: up to 4 MB ({@code
 *       --experiments=data_buffer_size_limit=4000000}, unless given), so that a bundle of up to
 *       ~400 MB passes Beam's Flink runner, which otherwise hangs on bundles over ~100 MB.
 * </ul>
 *
 * <p>Call it before {@code Pipeline.create(options)}, which needs the runner and the job service,
 * and close it once the pipeline has finished. Options built from arguments with {@code
 * withValidation()} need the runner (and, for {@code PortablePipelineOptions}, the job service)
 * while they are parsed: {@link #withDefaults} adds them to the arguments.
 */
public final class LocalRun implements AutoCloseable {
  /** The job service's {@code host:port}, read when {@code --jobEndpoint} is not given. */
  public static final String JOB_ENDPOINT_ENV = "INFERBRIDGE_JOB_ENDPOINT";

  private static final String DIRECT_RUNNER = "org.apache.beam.runners.direct.DirectRunner";

  // Beam's Java SDK harness, which serves this JVM's worker pool, never shuts down its logging
  // and data channels, and gRPC reports each one (SEVERE, with a stack trace) when it is garbage
  // collected: a successful run printed two or more. The report is dropped for Beam's vendored
  // gRPC only, by a filter (the harness resets log levels when a worker starts, not filters); the
  // logger is held here, as its filter lives as long as it does.
  private static final Logger ORPHANED_CHANNEL_REPORTS =
      Logger.getLogger(ManagedChannelImplBuilder.class.getPackage().getName() + ".ManagedChannelOrphanWrapper");

  // The most bytes the Java workers put in one data message to the runner. Beam's Flink runner
  // (2.62) reads a bundle's output only once the bundle is done, through a queue of 100 messages:
  // with Beam's default (1 MB) a Java stage sending more than ~100 MB in one bundle (in batch mode
  // a bundle is a whole partition) blocks, and the job hangs. 4 MB messages move that to ~400 MB.
  // Not more: the harness sends up to 100 messages before it checks that the runner takes them,
  // and holds what it sent in direct memory meanwhile (16 MB messages: up to 1.6 GB, and "Cannot
  // reserve direct buffer memory" in a 512 MB heap at 10M rows on the local job service).
  static final String DATA_BUFFER_SIZE_LIMIT = "data_buffer_size_limit";
  static final int DATA_BUFFER_BYTES = 4_000_000;

  static {
    PipelineOptionsFactory.register(FlinkBundleOptions.class);
  }

  /**
   * {@code --maxBundleSize}: the most elements in one bundle of a streaming job on Flink (the
   * Flink job server reads it from the job's options; default 1000, as Flink's own). With Beam's
   * Flink runner (2.62), which reads a bundle's output only once the bundle is done, a bundle must
   * send at most ~400 MB: bound it here, and split sources into elements that each expand to little
   * (a 10M-row job ran with {@code --streaming --maxBundleSize=20}). Registered when this class is
   * loaded ({@link #withDefaults} loads it before the arguments are parsed).
   */
  public interface FlinkBundleOptions extends PipelineOptions {
    @Default.Long(1000)
    Long getMaxBundleSize();

    void setMaxBundleSize(Long size);
  }

  private final GrpcFnServer<WorkerPool> javaWorkers;

  private LocalRun(GrpcFnServer<WorkerPool> javaWorkers) {
    this.javaWorkers = javaWorkers;
  }

  /**
   * {@code args} with {@code --runner=PortableRunner} and {@code --jobEndpoint} from {@value
   * #JOB_ENDPOINT_ENV} added where they are not given.
   *
   * @throws IllegalArgumentException when no job service is given
   * @throws IllegalStateException when {@value #JOB_ENDPOINT_ENV} is not {@code host:port}
   */
  public static String[] withDefaults(String[] args) {
    return withDefaults(args, System::getenv);
  }

  /** {@link #withDefaults(String[])} with {@code getenv} as the environment. */
  static String[] withDefaults(String[] args, Function<String, String> getenv) {
    List<String> all = new ArrayList<>(Arrays.asList(args));
    if (!isGiven(all, "runner")) {
      all.add("--runner=" + PortableRunner.class.getSimpleName());
    }
    if (!isGiven(all, "jobEndpoint")) {
      all.add("--jobEndpoint=" + jobEndpoint("LocalRun.withDefaults()", null, getenv));
    }
    return all.toArray(new String[0]);
  }

  /**
   * Points {@code options} at the local job service and serves this JVM's Java worker pool; see
   * the class documentation.
   *
   * @throws IllegalArgumentException when {@code options} name another runner than {@code
   *     PortableRunner}, or no job service is given
   * @throws IllegalStateException when {@value #JOB_ENDPOINT_ENV} is not {@code host:port}
   */
  public static LocalRun start(PipelineOptions options) throws IOException {
    return start(options, System::getenv);
  }

  /** {@link #start(PipelineOptions)} with {@code getenv} as the environment. */
  static LocalRun start(PipelineOptions options, Function<String, String> getenv) throws IOException {
    PortablePipelineOptions portable = options.as(PortablePipelineOptions.class);
    portable.setRunner(runner(portable));
    ORPHANED_CHANNEL_REPORTS.setFilter(report -> false);
    portable.setJobEndpoint(jobEndpoint("LocalRun.start()", portable.getJobEndpoint(), getenv));
    // Beam's LOOPBACK environment only gets its address at run(), too late for cross-language
    // expansion, which records the Java environment when the transform is applied: so this JVM
    // serves its own worker pool from before the pipeline is built.
    GrpcFnServer<WorkerPool> workers =
        GrpcFnServer.allocatePortAndCreateFor(new WorkerPool(portable), ServerFactory.createDefault());
    if (portable.getFilesToStage() == null) {
      portable.setFilesToStage(Collections.emptyList());
    }
    portable.setDefaultEnvironmentType("EXTERNAL");
    portable.setDefaultEnvironmentConfig(workers.getApiServiceDescriptor().getUrl());
    ExperimentalOptions experimental = options.as(ExperimentalOptions.class);
    if (ExperimentalOptions.getExperimentValue(experimental, DATA_BUFFER_SIZE_LIMIT) == null) {
      ExperimentalOptions.addExperiment(experimental, DATA_BUFFER_SIZE_LIMIT + "=" + DATA_BUFFER_BYTES);
    }
    return new LocalRun(workers);
  }

  /** Stops this JVM's worker pool. */
  @Override
  public void close() throws Exception {
    javaWorkers.close();
  }

  private static Class<? extends PipelineRunner<?>> runner(PipelineOptions options) {
    Class<? extends PipelineRunner<?>> runner;
    try {
      runner = options.getRunner();
    } catch (IllegalArgumentException e) {
      // No --runner, and no DirectRunner on the classpath to default to.
      return PortableRunner.class;
    }
    if (PortableRunner.class.isAssignableFrom(runner)) {
      return runner;
    }
    if (runner.getName().equals(DIRECT_RUNNER)) {
      return PortableRunner.class;
    }
    throw new IllegalArgumentException(
        "LocalRun.start(): the job service needs --runner=PortableRunner, got --runner="
            + runner.getSimpleName()
            + "; leave --runner out, or pass --runner=PortableRunner");
  }

  private static boolean isGiven(List<String> args, String name) {
    for (String arg : args) {
      if (arg.startsWith("--" + name + "=")) {
        return true;
      }
    }
    return false;
  }

  /** {@code given}, else the address in {@value #JOB_ENDPOINT_ENV}; {@code caller}: the method, for errors. */
  private static String jobEndpoint(String caller, String given, Function<String, String> getenv) {
    if (given != null && !given.trim().isEmpty()) {
      return given;
    }
    String fromEnv = getenv.apply(JOB_ENDPOINT_ENV);
    if (fromEnv == null || fromEnv.trim().isEmpty()) {
      throw new IllegalArgumentException(
          caller + ": no job service to run the pipeline. Run the command inside "
              + "`inferbridge-local -- <command>` (it starts one and sets $"
              + JOB_ENDPOINT_ENV
              + "), or set $"
              + JOB_ENDPOINT_ENV
              + "=host:port or pass --jobEndpoint=host:port of a running portable job service");
    }
    String trimmed = fromEnv.trim();
    if (!ExpansionService.isAddress(trimmed)) {
      throw new IllegalStateException(
          caller + ": $" + JOB_ENDPOINT_ENV + " must be host:port, e.g. localhost:8099, got \"" + fromEnv + "\"");
    }
    return trimmed;
  }

  /** Beam's thread-based Java worker pool, with a copy of the options for each worker. */
  private static final class WorkerPool extends BeamFnExternalWorkerPoolImplBase implements FnService {
    private final PipelineOptions options;

    WorkerPool(PipelineOptions options) {
      this.options = options;
    }

    @Override
    public void startWorker(StartWorkerRequest request, StreamObserver<StartWorkerResponse> response) {
      // A worker shuts its options' executor down when the runner releases it (Flink does after
      // each task, and after a failure), which would stop the other workers if they shared them.
      PipelineOptions own = PipelineOptionsTranslation.fromProto(PipelineOptionsTranslation.toProto(options));
      new ExternalWorkerService(own).startWorker(request, response);
    }

    @Override
    public void stopWorker(StopWorkerRequest request, StreamObserver<StopWorkerResponse> response) {
      new ExternalWorkerService(options).stopWorker(request, response);
    }

    @Override
    public void close() {}
  }
}
