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

  /**
   * The credentials for the service of a transform given {@code address}, {@code python} and
   * {@code configured} credentials (null: none given), with the process environment.
   */
  static ServiceCredentials credentials(
      String transform, String address, PythonEnvironment python, ServiceCredentials configured) {
    return credentials(transform, address, python, configured, System::getenv);
  }

  /**
   * The {@code configured} credentials, else those of the environment ({@link
   * ServiceCredentials#fromEnvironment()}). A service this JVM starts inherits the environment: it
   * requires the environment's token, and serves TLS only when {@value
   * ServiceCredentials#SERVICE_TLS_CERT_FILE_ENV} is set; then the transforms trust {@value
   * ServiceCredentials#TLS_CA_FILE_ENV}, or else that certificate itself.
   */
  static ServiceCredentials credentials(
      String transform,
      String address,
      PythonEnvironment python,
      ServiceCredentials configured,
      Function<String, String> getenv) {
    if (configured != null) {
      return configured;
    }
    ServiceCredentials fromEnv;
    try {
      fromEnv = ServiceCredentials.fromEnvironment(getenv);
      if (!startsHere(address, python, getenv)) {
        return fromEnv;
      }
      String serviceCertificate = getenv.apply(ServiceCredentials.SERVICE_TLS_CERT_FILE_ENV);
      if (isBlank(serviceCertificate)) {
        return fromEnv.withoutTls();
      }
      if (fromEnv.getTrustedCertificate() != null) {
        return fromEnv;
      }
      String path = serviceCertificate.trim();
      return fromEnv.trustingAs("$" + ServiceCredentials.SERVICE_TLS_CERT_FILE_ENV + "=" + path, path);
    } catch (IllegalArgumentException e) {
      throw new IllegalStateException(transform + ": " + e.getMessage(), e);
    }
  }

  /** Whether {@link #resolve} gives a service this JVM starts. */
  static boolean startsHere(String address, PythonEnvironment python, Function<String, String> getenv) {
    if (address != null) {
      return false;
    }
    if (python != null) {
      return true;
    }
    return isBlank(getenv.apply(Inference.EXPANSION_SERVICE_ENV)) && !isBlank(getenv.apply(PythonEnvironment.PYTHON_ENV));
  }

  private static boolean isBlank(String value) {
    return value == null || value.trim().isEmpty();
  }

  /** Whether {@code value} looks like {@code host:port}. */
  static boolean isAddress(String value) {
    return value != null && value.matches("[^\\s:]+:\\d{1,5}");
  }
}
