package dev.inferbridge.examples;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.apache.beam.fn.harness.ExternalWorkerService;
import org.apache.beam.runners.portability.PortableRunner;
import org.apache.beam.sdk.fn.server.GrpcFnServer;
import org.apache.beam.sdk.options.PortablePipelineOptions;

/**
 * Runs the examples on a local portable job service with no Docker: Java stages in this JVM,
 * Python stages in the InferBridge expansion service's worker pool.
 *
 * <p>The job service comes from {@code --jobEndpoint}, else from {@code $INFERBRIDGE_JOB_ENDPOINT}
 * (set by {@code inferbridge-local}). This JVM serves its own worker pool from before the pipeline
 * is built: Beam's LOOPBACK environment only gets its address at {@code run()}, too late for
 * cross-language expansion, which records the Java environment when the transform is applied.
 */
final class LocalPortableRun implements AutoCloseable {
  static final String JOB_ENDPOINT_ENV = "INFERBRIDGE_JOB_ENDPOINT";

  private final GrpcFnServer<ExternalWorkerService> javaWorkers;

  private LocalPortableRun(GrpcFnServer<ExternalWorkerService> javaWorkers) {
    this.javaWorkers = javaWorkers;
  }

  /** {@code args} with the runner and the job service added unless given. */
  static String[] withDefaults(String[] args) {
    List<String> all = new ArrayList<>(Arrays.asList(args));
    addDefault(all, "runner", PortableRunner.class.getSimpleName());
    // Keep Java environments between a job's stages: the workers this JVM serves share one
    // options object, and with it one executor, which a released worker would shut down (Flink
    // releases the environment after each task by default).
    addDefault(all, "environmentCacheMillis", String.valueOf(60 * 60 * 1000));
    String jobEndpoint = System.getenv(JOB_ENDPOINT_ENV);
    if (jobEndpoint != null) {
      addDefault(all, "jobEndpoint", jobEndpoint);
    }
    return all.toArray(new String[0]);
  }

  /** Serves this JVM's worker pool and points the Java environment at it. */
  static LocalPortableRun start(PortablePipelineOptions options) throws Exception {
    if (options.getJobEndpoint() == null) {
      throw new IllegalArgumentException(
          "no job service: pass --jobEndpoint=host:port, or run under `inferbridge-local -- <command>`");
    }
    GrpcFnServer<ExternalWorkerService> workers = new ExternalWorkerService(options).start();
    options.setDefaultEnvironmentType("EXTERNAL");
    options.setDefaultEnvironmentConfig(workers.getApiServiceDescriptor().getUrl());
    return new LocalPortableRun(workers);
  }

  @Override
  public void close() throws Exception {
    javaWorkers.close();
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
