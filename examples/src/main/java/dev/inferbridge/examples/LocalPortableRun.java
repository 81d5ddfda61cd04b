package dev.inferbridge.examples;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.apache.beam.fn.harness.ExternalWorkerService;
import org.apache.beam.model.fnexecution.v1.BeamFnApi.StartWorkerRequest;
import org.apache.beam.model.fnexecution.v1.BeamFnApi.StartWorkerResponse;
import org.apache.beam.model.fnexecution.v1.BeamFnApi.StopWorkerRequest;
import org.apache.beam.model.fnexecution.v1.BeamFnApi.StopWorkerResponse;
import org.apache.beam.model.fnexecution.v1.BeamFnExternalWorkerPoolGrpc.BeamFnExternalWorkerPoolImplBase;
import org.apache.beam.runners.portability.PortableRunner;
import org.apache.beam.sdk.fn.server.FnService;
import org.apache.beam.sdk.fn.server.GrpcFnServer;
import org.apache.beam.sdk.fn.server.ServerFactory;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PortablePipelineOptions;
import org.apache.beam.sdk.util.construction.PipelineOptionsTranslation;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.stub.StreamObserver;

/**
 * Runs the examples (and the benchmarks' Java pipelines) on a portable job service with no
 * Docker: Java stages in this JVM, Python stages in the InferBridge expansion service's worker pool.
 *
 * <p>The job service comes from {@code --jobEndpoint}, else from {@code $INFERBRIDGE_JOB_ENDPOINT}
 * (set by {@code inferbridge-local}). This JVM serves its own worker pool from before the pipeline
 * is built: Beam's LOOPBACK environment only gets its address at {@code run()}, too late for
 * cross-language expansion, which records the Java environment when the transform is applied.
 * Each worker gets its own copy of the options: a worker shuts its options' executor down when the
 * runner releases it (Flink does after each task, and after a failure), which would stop the
 * workers that share them.
 */
public final class LocalPortableRun implements AutoCloseable {
  public static final String JOB_ENDPOINT_ENV = "INFERBRIDGE_JOB_ENDPOINT";

  private final GrpcFnServer<WorkerPool> javaWorkers;

  private LocalPortableRun(GrpcFnServer<WorkerPool> javaWorkers) {
    this.javaWorkers = javaWorkers;
  }

  /** {@code args} with the runner and the job service added unless given. */
  public static String[] withDefaults(String[] args) {
    List<String> all = new ArrayList<>(Arrays.asList(args));
    addDefault(all, "runner", PortableRunner.class.getSimpleName());
    String jobEndpoint = System.getenv(JOB_ENDPOINT_ENV);
    if (jobEndpoint != null) {
      addDefault(all, "jobEndpoint", jobEndpoint);
    }
    return all.toArray(new String[0]);
  }

  /** Serves this JVM's worker pool and points the Java environment at it. */
  public static LocalPortableRun start(PortablePipelineOptions options) throws Exception {
    if (options.getJobEndpoint() == null) {
      throw new IllegalArgumentException(
          "no job service: pass --jobEndpoint=host:port, or run under `inferbridge-local -- <command>`");
    }
    GrpcFnServer<WorkerPool> workers = GrpcFnServer.allocatePortAndCreateFor(new WorkerPool(options), ServerFactory.createDefault());
    options.setDefaultEnvironmentType("EXTERNAL");
    options.setDefaultEnvironmentConfig(workers.getApiServiceDescriptor().getUrl());
    return new LocalPortableRun(workers);
  }

  @Override
  public void close() throws Exception {
    javaWorkers.close();
  }

  /** Beam's thread-based Java worker pool, with a copy of the options for each worker. */
  private static final class WorkerPool extends BeamFnExternalWorkerPoolImplBase implements FnService {
    private final PipelineOptions options;

    WorkerPool(PipelineOptions options) {
      this.options = options;
    }

    @Override
    public void startWorker(StartWorkerRequest request, StreamObserver<StartWorkerResponse> response) {
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

  private static void addDefault(List<String> args, String name, String value) {
    for (String arg : args) {
      if (arg.startsWith("--" + name + "=")) {
        return;
      }
    }
    args.add("--" + name + "=" + value);
  }
}
