package dev.inferbridge;

import java.util.function.Function;

/**
 * Where the InferBridge expansion service of a transform is, in this order:
 *
 * <ol>
 *   <li>the address given to {@code withExpansionService("host:port")};
 *   <li>a service this JVM starts from the environment given to {@code
 *       withLocalExpansionService(PythonEnvironment)};
 *   <li>the address in {@value Inference#EXPANSION_SERVICE_ENV};
 *   <li>a service this JVM starts from {@value PythonEnvironment#PYTHON_ENV}, a virtualenv
 *       directory or Python executable (the service inherits this JVM's environment, so it reads
 *       its model policy from {@code $INFERBRIDGE_MODEL_ROOTS}, {@code
 *       $INFERBRIDGE_TRUSTED_MODEL_ROOTS} and {@code $INFERBRIDGE_ALLOWED_MODEL_CLASSES});
 *   <li>else an error that lists these ways.
 * </ol>
 */
final class ExpansionService {
  private ExpansionService() {}

  /** Resolves with the process environment; {@code transform} names the caller in errors. */
  static String resolve(String transform, String address, PythonEnvironment python) {
    return resolve(transform, address, python, System::getenv, LocalExpansionService::addressOf);
  }

  /** Resolves with {@code getenv} for the environment and {@code start} to start a local service. */
  static String resolve(
      String transform,
      String address,
      PythonEnvironment python,
      Function<String, String> getenv,
      Function<PythonEnvironment, String> start) {
    if (address != null) {
      return address;
    }
    if (python != null) {
      return start.apply(python);
    }
    String fromEnv = getenv.apply(Inference.EXPANSION_SERVICE_ENV);
    if (fromEnv != null && !fromEnv.trim().isEmpty()) {
      String trimmed = fromEnv.trim();
      if (!isAddress(trimmed)) {
        throw new IllegalStateException(
            transform + ": $" + Inference.EXPANSION_SERVICE_ENV + " must be host:port, e.g. localhost:8097, got \""
                + fromEnv + "\"");
      }
      return trimmed;
    }
    String pythonFromEnv = getenv.apply(PythonEnvironment.PYTHON_ENV);
    if (pythonFromEnv != null && !pythonFromEnv.trim().isEmpty()) {
      return start.apply(PythonEnvironment.fromVariable(pythonFromEnv));
    }
    throw new IllegalStateException(
        transform + ": no InferBridge expansion service is configured. Either give the address of a "
            + "running one with withExpansionService(\"host:port\") or $" + Inference.EXPANSION_SERVICE_ENV
            + " (start one with `inferbridge-expansion-service --port 8097`, or run the pipeline under "
            + "`inferbridge-local -- <command>`), or let this JVM start one for the pipeline's lifetime "
            + "from a Python environment with inferbridge installed, with withLocalExpansionService("
            + "PythonEnvironment.virtualenv(\"/path/to/venv\")) or $" + PythonEnvironment.PYTHON_ENV
            + "=/path/to/venv (a virtualenv directory or a Python executable)");
  }

  /** Whether {@code value} looks like {@code host:port}. */
  static boolean isAddress(String value) {
    return value != null && value.matches("[^\\s:]+:\\d{1,5}");
  }
}
