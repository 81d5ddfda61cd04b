package dev.inferbridge;

import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Deque;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * An InferBridge expansion service that this JVM started from a {@link PythonEnvironment}, and
 * runs until the JVM exits.
 *
 * <p>One service per distinct command (Python and flags) per JVM. It listens on a free loopback
 * port; its address is read from the one line it logs when it listens. Its output (stdout and
 * stderr) is read all along, so that the pipe never fills: each line goes to this class's SLF4J
 * logger, and the last {@value #KEPT_LINES} lines are kept for error messages.
 *
 * <p>The service also hosts the Python worker pool that runs the pipeline's Python stages, so it
 * must outlive every pipeline run of this JVM: a shutdown hook stops it when the JVM exits
 * (SIGTERM, up to {@value #STOP_GRACE_SECS} s to finish, then a forced kill).
 */
final class LocalExpansionService {
  private static final Logger LOG = LoggerFactory.getLogger(LocalExpansionService.class);

  static final int KEPT_LINES = 50;
  static final long STOP_GRACE_SECS = 60;

  /** The line the service logs once it listens: {@code ... listening on 127.0.0.1:PORT; serving ...}. */
  private static final Pattern LISTENING = Pattern.compile("listening on (\\S+):(\\d+)(;|\\s|$)");

  /** The service's log format: {@code 2026-01-01 00:00:00,000 LEVEL logger: message}. */
  private static final Pattern LOG_LINE =
      Pattern.compile("\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d,\\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ");

  private static final Pattern NO_INFERBRIDGE = Pattern.compile("No module named '?inferbridge\\b");
  private static final Pattern NO_MODULE = Pattern.compile("No module named '?([\\w.]+)'?");

  private static final String CREATE_ENVIRONMENT =
      "create one with `python3 -m venv DIR && DIR/bin/pip install inferbridge` and pass "
          + "PythonEnvironment.virtualenv(\"DIR\") (in the InferBridge repository, `scripts/bootstrap` "
          + "creates .venv)";

  /** The running services, by command. */
  private static final Map<List<String>, LocalExpansionService> RUNNING = new ConcurrentHashMap<>();

  /** Held while a service is looked up or started, so that each command starts once. */
  private static final Object STARTING = new Object();

  /**
   * Every service process started and not stopped yet, including those still starting: what the
   * shutdown hook stops. Guards {@link #exiting} and {@link #hookAdded} too.
   */
  private static final List<Process> PROCESSES = new ArrayList<>();

  private static boolean exiting;
  private static boolean hookAdded;

  private final Process process;
  private final String address;
  private final Deque<String> lastLines;

  private LocalExpansionService(Process process, String address, Deque<String> lastLines) {
    this.process = process;
    this.address = address;
    this.lastLines = lastLines;
  }

  /** The address of the service of {@code env}, started now unless it already runs. */
  static String addressOf(PythonEnvironment env) {
    List<String> command = env.command();
    synchronized (STARTING) {
      LocalExpansionService running = RUNNING.get(command);
      if (running != null && running.process.isAlive()) {
        return running.address;
      }
      if (running != null) {
        LOG.warn(
            "The local InferBridge expansion service at {} (pid {}) has exited with status {}; "
                + "starting a new one. Its last log lines:\n{}",
            running.address, running.process.pid(), running.process.exitValue(), running.lastLog());
        stop(running.process);
      }
      LocalExpansionService started = start(env, command);
      RUNNING.put(command, started);
      return started.address;
    }
  }

  private static LocalExpansionService start(PythonEnvironment env, List<String> command) {
    String python = checkPython(env);
    List<String> resolved = new ArrayList<>(command);
    resolved.set(0, python);
    ProcessBuilder builder = new ProcessBuilder(resolved).redirectErrorStream(true);
    // The worker pool runs the Python stages with this environment's packages; unbuffered, so that
    // the address line arrives at once.
    builder.environment().put("PYTHONUNBUFFERED", "1");
    Process process;
    try {
      process = launch(builder);
    } catch (IOException e) {
      throw new IllegalStateException(
          "cannot start the local InferBridge expansion service of " + env + ": running " + python
              + " failed (" + e.getMessage() + "); pass a Python with inferbridge installed, or "
              + CREATE_ENVIRONMENT,
          e);
    }
    try {
      process.getOutputStream().close(); // the service reads no input
    } catch (IOException e) {
      // nothing to close
    }
    Deque<String> lastLines = new ArrayDeque<>();
    CompletableFuture<String> listening = new CompletableFuture<>();
    Thread reader =
        new Thread(() -> drain(process, lastLines, listening), "inferbridge-expansion-service-log-" + process.pid());
    reader.setDaemon(true);
    reader.start();
    long timeoutMillis = env.getStartupTimeout().getMillis();
    String address;
    try {
      address = listening.get(timeoutMillis, TimeUnit.MILLISECONDS);
    } catch (TimeoutException e) {
      stop(process);
      throw new IllegalStateException(
          "the local InferBridge expansion service of " + env + " (" + String.join(" ", resolved)
              + ") did not start listening within " + timeoutMillis / 1000.0 + " s, and was stopped; "
              + "raise the limit with withStartupTimeout() if this machine is slow. Its last log lines:\n"
              + tail(lastLines),
          e);
    } catch (InterruptedException e) {
      stop(process);
      Thread.currentThread().interrupt();
      throw new IllegalStateException("interrupted while starting the local InferBridge expansion service", e);
    } catch (ExecutionException e) {
      throw exitedEarly(env, python, resolved, process, lastLines);
    }
    LOG.info(
        "Started the local InferBridge expansion service (pid {}) at {} from {}; it stops when this JVM exits",
        process.pid(), address, env);
    return new LocalExpansionService(process, address, lastLines);
  }

  /** Starts {@code builder}'s process, which the shutdown hook (added now if need be) will stop. */
  private static Process launch(ProcessBuilder builder) throws IOException {
    synchronized (PROCESSES) {
      if (exiting) {
        throw new IllegalStateException(
            "this JVM is exiting: not starting a local InferBridge expansion service");
      }
      if (!hookAdded) {
        Runtime.getRuntime()
            .addShutdownHook(new Thread(() -> stopAll(true), "inferbridge-stop-expansion-services"));
        hookAdded = true;
      }
      Process process = builder.start();
      PROCESSES.add(process);
      return process;
    }
  }

  /** The Python executable to run, after checking that it exists and may be run. */
  private static String checkPython(PythonEnvironment env) {
    String python = env.getPython();
    String fix = "; pass a Python with inferbridge installed, or " + CREATE_ENVIRONMENT;
    if (env.virtualenv() != null) {
      File dir = new File(env.virtualenv());
      if (!dir.isDirectory()) {
        throw new IllegalStateException(
            "cannot start the local InferBridge expansion service of " + env + ": " + dir
                + " is not a directory" + fix);
      }
      if (!new File(python).exists()) {
        throw new IllegalStateException(
            "cannot start the local InferBridge expansion service of " + env + ": " + dir
                + " is not a virtualenv (there is no " + python + ")" + fix);
      }
    }
    if (python.indexOf(File.separatorChar) < 0) {
      String found = onPath(python);
      if (found == null) {
        throw new IllegalStateException(
            "cannot start the local InferBridge expansion service of " + env + ": " + python
                + " is not a command on the PATH (" + System.getenv("PATH") + ")" + fix);
      }
      return found;
    }
    File file = new File(python);
    if (!file.exists()) {
      throw new IllegalStateException(
          "cannot start the local InferBridge expansion service of " + env + ": " + python
              + " does not exist" + fix);
    }
    if (file.isDirectory() || !file.canExecute()) {
      throw new IllegalStateException(
          "cannot start the local InferBridge expansion service of " + env + ": " + python
              + (file.isDirectory() ? " is a directory, not a Python executable" : " is not executable") + fix);
    }
    return python;
  }

  private static String onPath(String command) {
    String path = System.getenv("PATH");
    if (path == null) {
      return null;
    }
    for (String dir : path.split(File.pathSeparator)) {
      File candidate = new File(dir.isEmpty() ? "." : dir, command);
      if (candidate.isFile() && candidate.canExecute()) {
        return candidate.getPath();
      }
    }
    return null;
  }

  private static IllegalStateException exitedEarly(
      PythonEnvironment env, String python, List<String> command, Process process, Deque<String> lastLines) {
    String status;
    try {
      status = process.waitFor(STOP_GRACE_SECS, TimeUnit.SECONDS) ? String.valueOf(process.exitValue()) : "unknown";
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      status = "unknown";
    }
    stop(process); // forgets it, and stops it if its output ended while it runs on
    String log = tail(lastLines);
    String prefix = "the local InferBridge expansion service of " + env + " exited with status " + status
        + " before it listened: ";
    if (NO_INFERBRIDGE.matcher(log).find()) {
      return new IllegalStateException(
          prefix + "the inferbridge package is not installed in " + python + ". Install it with `" + python
              + " -m pip install inferbridge` (in the InferBridge repository: `pip install -e python`), "
              + "or pass another environment; " + CREATE_ENVIRONMENT + ". Its output:\n" + log);
    }
    Matcher missing = NO_MODULE.matcher(log);
    if (missing.find()) {
      return new IllegalStateException(
          prefix + "the Python module " + missing.group(1) + ", which inferbridge needs, is not installed in "
              + python + "; reinstall inferbridge with its dependencies (`" + python
              + " -m pip install inferbridge`). Its output:\n" + log);
    }
    return new IllegalStateException(
        prefix + "see its last log lines (command: " + String.join(" ", command) + "):\n" + log);
  }

  /** Reads the service's output to its end: logs it, keeps its tail, and reports the address. */
  private static void drain(Process process, Deque<String> lastLines, CompletableFuture<String> listening) {
    try (BufferedReader reader =
        new BufferedReader(new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8))) {
      String line;
      String level = "INFO";
      while ((line = reader.readLine()) != null) {
        synchronized (lastLines) {
          lastLines.addLast(line);
          while (lastLines.size() > KEPT_LINES) {
            lastLines.removeFirst();
          }
        }
        level = log(line, level);
        if (!listening.isDone()) {
          Matcher m = LISTENING.matcher(line);
          if (m.find()) {
            listening.complete(m.group(1) + ":" + m.group(2));
          }
        }
      }
    } catch (IOException e) {
      LOG.debug("Reading the expansion service's output failed", e);
    } finally {
      listening.completeExceptionally(new IllegalStateException("the expansion service's output ended"));
    }
  }

  /**
   * Logs a line of the service at its level: that of its log format ({@code DATE TIME LEVEL
   * name: message}), else (a traceback's continuation) that of the line before.
   */
  private static String log(String line, String previousLevel) {
    Matcher m = LOG_LINE.matcher(line);
    String level = m.lookingAt() ? m.group(1) : previousLevel;
    switch (level) {
      case "CRITICAL":
      case "ERROR":
        LOG.error("[expansion service] {}", line);
        break;
      case "WARNING":
        LOG.warn("[expansion service] {}", line);
        break;
      case "DEBUG":
        LOG.debug("[expansion service] {}", line);
        break;
      default:
        LOG.info("[expansion service] {}", line);
    }
    return level;
  }

  private String lastLog() {
    return tail(lastLines);
  }

  private static String tail(Deque<String> lines) {
    synchronized (lines) {
      return lines.isEmpty() ? "(no output)" : String.join("\n", lines);
    }
  }

  /** Stops every service this JVM started; for tests. */
  static void stopAll() {
    stopAll(false);
  }

  /**
   * Stops every service this JVM started, including any that is still starting; with {@code
   * exiting} (the shutdown hook), none is started afterwards. Does not wait for a start in
   * progress.
   */
  private static void stopAll(boolean exiting) {
    List<Process> processes;
    synchronized (PROCESSES) {
      LocalExpansionService.exiting |= exiting;
      processes = new ArrayList<>(PROCESSES);
    }
    RUNNING.clear();
    for (Process process : processes) {
      process.destroy(); // SIGTERM: the service finishes in-flight requests and exits
    }
    for (Process process : processes) {
      stop(process);
      LOG.info(
          "Stopped the local InferBridge expansion service (pid {}): {}",
          process.pid(), process.isAlive() ? "still running" : "exit status " + process.exitValue());
    }
  }

  /** SIGTERM, then a forced kill if the process has not exited after {@value #STOP_GRACE_SECS} s. */
  private static void stop(Process process) {
    process.destroy();
    try {
      if (!process.waitFor(STOP_GRACE_SECS, TimeUnit.SECONDS)) {
        process.descendants().forEach(ProcessHandle::destroyForcibly);
        process.destroyForcibly();
        process.waitFor(STOP_GRACE_SECS, TimeUnit.SECONDS);
      }
    } catch (InterruptedException e) {
      process.destroyForcibly();
      Thread.currentThread().interrupt();
    }
    synchronized (PROCESSES) {
      PROCESSES.remove(process);
    }
  }

  /** The processes of the services this JVM runs now, by command; for tests. */
  static Map<List<String>, Process> running() {
    Map<List<String>, Process> result = new HashMap<>();
    for (Map.Entry<List<String>, LocalExpansionService> entry : RUNNING.entrySet()) {
      result.put(entry.getKey(), entry.getValue().process);
    }
    return result;
  }
}
