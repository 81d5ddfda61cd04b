package dev.inferbridge;

import java.io.File;
import java.io.Serializable;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Objects;
import org.joda.time.Duration;

/**
 * A Python environment with the {@code inferbridge} package installed, from which this JVM starts
 * a local InferBridge expansion service: which Python to run, and the model policy flags the
 * service gets.
 *
 * <pre>{@code
 * PythonEnvironment python =
 *     PythonEnvironment.virtualenv("/opt/inferbridge-venv")      // runs /opt/inferbridge-venv/bin/python
 *         .withTrustedModelRoots("/models")                      // --trusted-model-root=/models
 *         .withModelRoots("/models", "gs://bucket/models");     // --model-root=... (each)
 * InferenceResult result = rows.apply(
 *     Inference.of(SklearnModel.pickle("/models/digits.pkl"))
 *         .withKeyField("id")
 *         .withFeatureField("pixels")
 *         .withLocalExpansionService(python));
 * }</pre>
 *
 * <p>The service is started when the first transform that names this environment is applied
 * ({@code python -m inferbridge.expansion_service --host 127.0.0.1 --port 0 ...}), is shared by
 * every transform of this JVM that names an equal environment, and is stopped when the JVM exits.
 * It has to live that long: its worker pool runs the pipeline's Python stages. See {@link
 * #startExpansionService()}.
 *
 * <p>The service also reads {@code $INFERBRIDGE_MODEL_ROOTS}, {@code
 * $INFERBRIDGE_TRUSTED_MODEL_ROOTS} and {@code $INFERBRIDGE_ALLOWED_MODEL_CLASSES}
 * (comma-separated) from the environment it inherits from this JVM; the flags given here add to
 * those.
 *
 * <p>Create a suitable environment with {@code python3 -m venv DIR && DIR/bin/pip install
 * inferbridge}; in the InferBridge repository, {@code scripts/bootstrap} creates {@code .venv}.
 *
 * <p>Instances are immutable values: every {@code withX} method returns a new one.
 */
public final class PythonEnvironment implements Serializable {
  private static final long serialVersionUID = 1L;

  /**
   * The environment variable naming a Python environment to start a local expansion service
   * from when no service is configured: a virtualenv directory or a Python executable.
   */
  public static final String PYTHON_ENV = "INFERBRIDGE_PYTHON";

  static final Duration DEFAULT_STARTUP_TIMEOUT = Duration.standardSeconds(180);

  private final String python;
  private final String virtualenv;
  private final String origin;
  private final List<String> modelRoots;
  private final List<String> trustedModelRoots;
  private final List<String> allowedModelClasses;
  private final Duration startupTimeout;

  private PythonEnvironment(
      String python,
      String virtualenv,
      String origin,
      List<String> modelRoots,
      List<String> trustedModelRoots,
      List<String> allowedModelClasses,
      Duration startupTimeout) {
    this.python = python;
    this.virtualenv = virtualenv;
    this.origin = origin;
    this.modelRoots = modelRoots;
    this.trustedModelRoots = trustedModelRoots;
    this.allowedModelClasses = allowedModelClasses;
    this.startupTimeout = startupTimeout;
  }

  /**
   * The virtualenv (or conda environment) in directory {@code dir}: runs {@code dir/bin/python}
   * ({@code dir\\Scripts\\python.exe} on Windows).
   */
  public static PythonEnvironment virtualenv(String dir) {
    String checked = requirePath("PythonEnvironment.virtualenv()", dir);
    boolean windows = File.separatorChar == '\\';
    String python = new File(new File(checked, windows ? "Scripts" : "bin"), windows ? "python.exe" : "python").getPath();
    return new PythonEnvironment(
        python, checked, "PythonEnvironment.virtualenv(\"" + checked + "\")", empty(), empty(), empty(),
        DEFAULT_STARTUP_TIMEOUT);
  }

  /**
   * The Python executable {@code python}: a path (e.g. {@code /opt/venv/bin/python}), or a command
   * name looked up on the {@code PATH} (e.g. {@code python3}).
   */
  public static PythonEnvironment executable(String python) {
    String checked = requirePath("PythonEnvironment.executable()", python);
    return new PythonEnvironment(
        checked, null, "PythonEnvironment.executable(\"" + checked + "\")", empty(), empty(), empty(),
        DEFAULT_STARTUP_TIMEOUT);
  }

  /** A virtualenv if {@code pathOrVenv} is a directory, else a Python executable. */
  public static PythonEnvironment of(String pathOrVenv) {
    String checked = requirePath("PythonEnvironment.of()", pathOrVenv);
    return new File(checked).isDirectory() ? virtualenv(checked) : executable(checked);
  }

  /** The environment named by {@value #PYTHON_ENV} (value {@code value}), for error messages. */
  static PythonEnvironment fromVariable(String value) {
    String trimmed = value.trim();
    PythonEnvironment env = of(trimmed);
    return new PythonEnvironment(
        env.python, env.virtualenv, "$" + PYTHON_ENV + "=" + trimmed, env.modelRoots, env.trustedModelRoots,
        env.allowedModelClasses, env.startupTimeout);
  }

  /**
   * Models must be under one of these directories or URIs ({@code --model-root}, once each);
   * replaces earlier ones. Without any, the service's {@code $INFERBRIDGE_MODEL_ROOTS} applies
   * (unset: anywhere).
   */
  public PythonEnvironment withModelRoots(String... roots) {
    return new PythonEnvironment(
        python, virtualenv, origin, values("withModelRoots()", roots), trustedModelRoots, allowedModelClasses,
        startupTimeout);
  }

  /**
   * Pickle, joblib and TorchScript models, which run code when loaded, may be loaded from these
   * directories or URIs ({@code --trusted-model-root}, once each); replaces earlier ones. Without
   * any, only from {@code $INFERBRIDGE_TRUSTED_MODEL_ROOTS} (unset: nowhere).
   */
  public PythonEnvironment withTrustedModelRoots(String... roots) {
    return new PythonEnvironment(
        python, virtualenv, origin, modelRoots, values("withTrustedModelRoots()", roots), allowedModelClasses,
        startupTimeout);
  }

  /**
   * PyTorch {@code model_class}es may be imported from modules under these prefixes ({@code
   * --allow-model-class}, once each); replaces earlier ones. Without any, only from {@code
   * $INFERBRIDGE_ALLOWED_MODEL_CLASSES} (unset: none).
   */
  public PythonEnvironment withAllowedModelClasses(String... modulePrefixes) {
    return new PythonEnvironment(
        python, virtualenv, origin, modelRoots, trustedModelRoots,
        values("withAllowedModelClasses()", modulePrefixes), startupTimeout);
  }

  /** How long the service may take to start listening; default 180 s. */
  public PythonEnvironment withStartupTimeout(Duration timeout) {
    if (timeout == null || timeout.getMillis() <= 0) {
      throw new IllegalArgumentException(
          "PythonEnvironment.withStartupTimeout(): the duration must be positive, got " + timeout);
    }
    return new PythonEnvironment(
        python, virtualenv, origin, modelRoots, trustedModelRoots, allowedModelClasses, timeout);
  }

  /**
   * Starts the InferBridge expansion service of this environment, unless this JVM already runs
   * one for an equal environment, and returns its {@code host:port} (on 127.0.0.1).
   *
   * <p>The service runs until this JVM exits: a shutdown hook stops it (SIGTERM, then a forced
   * kill if it has not exited after 10 s). It must not stop earlier, because its worker pool runs
   * the Python stages of the pipelines it expanded. A JVM that is killed without running its
   * shutdown hooks ({@code kill -9}) leaves the service running. Its log goes to the SLF4J logger
   * {@code dev.inferbridge.LocalExpansionService}.
   *
   * <p>Use it to give the address to code that takes one, e.g. Beam's {@code
   * PythonExternalTransform}; the InferBridge transforms call it themselves when given {@code
   * withLocalExpansionService(this)}.
   *
   * @throws IllegalStateException naming what to fix when Python is not found, {@code
   *     inferbridge} is not installed in it, or the service exits or does not listen in time
   */
  public String startExpansionService() {
    return LocalExpansionService.addressOf(this);
  }

  /** The Python executable to run. */
  public String getPython() {
    return python;
  }

  public List<String> getModelRoots() {
    return modelRoots;
  }

  public List<String> getTrustedModelRoots() {
    return trustedModelRoots;
  }

  public List<String> getAllowedModelClasses() {
    return allowedModelClasses;
  }

  public Duration getStartupTimeout() {
    return startupTimeout;
  }

  /** The virtualenv directory, or null when built from an executable. */
  String virtualenv() {
    return virtualenv;
  }

  /** How this environment was named, for error messages. */
  String origin() {
    return origin;
  }

  /** The command that starts the service; equal commands share one service. */
  List<String> command() {
    List<String> command = new ArrayList<>();
    command.addAll(
        Arrays.asList(
            python, "-m", "inferbridge.expansion_service", "--host", "127.0.0.1", "--port", "0",
            "--log-level", "INFO"));
    for (String root : modelRoots) {
      command.add("--model-root=" + root);
    }
    for (String root : trustedModelRoots) {
      command.add("--trusted-model-root=" + root);
    }
    for (String prefix : allowedModelClasses) {
      command.add("--allow-model-class=" + prefix);
    }
    return Collections.unmodifiableList(command);
  }

  @Override
  public boolean equals(Object other) {
    if (!(other instanceof PythonEnvironment)) {
      return false;
    }
    PythonEnvironment that = (PythonEnvironment) other;
    return python.equals(that.python)
        && modelRoots.equals(that.modelRoots)
        && trustedModelRoots.equals(that.trustedModelRoots)
        && allowedModelClasses.equals(that.allowedModelClasses)
        && startupTimeout.equals(that.startupTimeout);
  }

  @Override
  public int hashCode() {
    return Objects.hash(python, modelRoots, trustedModelRoots, allowedModelClasses, startupTimeout);
  }

  @Override
  public String toString() {
    StringBuilder s = new StringBuilder(origin);
    if (!modelRoots.isEmpty()) {
      s.append(".withModelRoots(").append(quoted(modelRoots)).append(')');
    }
    if (!trustedModelRoots.isEmpty()) {
      s.append(".withTrustedModelRoots(").append(quoted(trustedModelRoots)).append(')');
    }
    if (!allowedModelClasses.isEmpty()) {
      s.append(".withAllowedModelClasses(").append(quoted(allowedModelClasses)).append(')');
    }
    return s.toString();
  }

  private static String quoted(List<String> values) {
    List<String> quoted = new ArrayList<>();
    for (String value : values) {
      quoted.add("\"" + value + "\"");
    }
    return String.join(", ", quoted);
  }

  private static List<String> empty() {
    return Collections.emptyList();
  }

  private static String requirePath(String method, String path) {
    if (path == null || path.trim().isEmpty()) {
      throw new IllegalArgumentException(method + ": must be a non-empty path, got " + Model.quote(path));
    }
    return path.trim();
  }

  private static List<String> values(String method, String[] values) {
    if (values == null) {
      throw new IllegalArgumentException("PythonEnvironment." + method + ": values must not be null");
    }
    List<String> checked = new ArrayList<>();
    for (String value : values) {
      if (value == null || value.trim().isEmpty()) {
        throw new IllegalArgumentException(
            "PythonEnvironment." + method + ": each value must be a non-empty string, got " + Model.quote(value));
      }
      checked.add(value.trim());
    }
    return Collections.unmodifiableList(checked);
  }
}
