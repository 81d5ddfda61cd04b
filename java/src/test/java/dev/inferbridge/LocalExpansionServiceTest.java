package dev.inferbridge;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.testing.CrashingRunner;
import org.apache.beam.sdk.transforms.Create;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;
import org.joda.time.Duration;
import org.junit.After;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

/**
 * Where the expansion service comes from, and starting one from a Python environment. No Python
 * is needed: the "Pythons" here are shell scripts that behave like the service's start-up.
 */
public class LocalExpansionServiceTest {
  @Rule public TemporaryFolder tmp = new TemporaryFolder();

  private static final Schema INPUT =
      Schema.builder().addStringField("id").addArrayField("pixels", FieldType.DOUBLE).build();

  private static final Inference BASE =
      Inference.of(SklearnModel.pickle("/m.pkl")).withKeyField("id").withFeatureField("pixels");

  @After
  public void stopServices() {
    LocalExpansionService.stopAll();
  }

  // ---- resolution order -------------------------------------------------------------------

  private static final PythonEnvironment CONFIGURED = PythonEnvironment.executable("/configured/python");

  /** Resolves with {@code env} as the process environment; a started service is "started:<python>". */
  private static String resolve(String address, PythonEnvironment python, String... env) {
    Map<String, String> vars = new HashMap<>();
    for (int i = 0; i < env.length; i += 2) {
      vars.put(env[i], env[i + 1]);
    }
    Function<PythonEnvironment, String> start = p -> "started:" + p.getPython();
    return ExpansionService.resolve("Inference", address, python, vars::get, start);
  }

  private static final String[] BOTH_VARIABLES = {
    "INFERBRIDGE_EXPANSION_SERVICE", "env-host:2", "INFERBRIDGE_PYTHON", "/env/python"
  };

  @Test
  public void aConfiguredAddressComesFirst() {
    assertEquals("host:1", resolve("host:1", CONFIGURED, BOTH_VARIABLES));
  }

  @Test
  public void thenTheConfiguredPythonEnvironment() {
    assertEquals("started:/configured/python", resolve(null, CONFIGURED, BOTH_VARIABLES));
  }

  @Test
  public void thenTheAddressVariable() {
    assertEquals("env-host:2", resolve(null, null, BOTH_VARIABLES));
    assertEquals("env-host:2", resolve(null, null, "INFERBRIDGE_EXPANSION_SERVICE", " env-host:2 "));
  }

  @Test
  public void thenThePythonVariableAnExecutableOrAVirtualenv() throws IOException {
    assertEquals("started:/env/python", resolve(null, null, "INFERBRIDGE_PYTHON", "/env/python"));
    assertEquals("started:/env/python", resolve(null, null, "INFERBRIDGE_EXPANSION_SERVICE", " ", "INFERBRIDGE_PYTHON", "/env/python"));
    File venv = tmp.newFolder("venv");
    assertEquals(
        "started:" + new File(venv, "bin/python").getPath(),
        resolve(null, null, "INFERBRIDGE_PYTHON", venv.getPath()));
  }

  @Test
  public void withNothingConfiguredTheErrorNamesEveryWay() {
    String error = assertThrows(IllegalStateException.class, () -> resolve(null, null)).getMessage();
    assertTrue(error, error.startsWith("Inference: no InferBridge expansion service is configured."));
    for (String way : Arrays.asList(
        "withExpansionService(\"host:port\")", "$INFERBRIDGE_EXPANSION_SERVICE", "inferbridge-expansion-service --port 8097",
        "inferbridge-local -- <command>", "withLocalExpansionService(PythonEnvironment.virtualenv(\"/path/to/venv\"))",
        "$INFERBRIDGE_PYTHON=/path/to/venv")) {
      assertTrue(way + " in " + error, error.contains(way));
    }
  }

  @Test
  public void aMalformedAddressVariableIsNamed() {
    String error = assertThrows(
        IllegalStateException.class, () -> resolve(null, null, "INFERBRIDGE_EXPANSION_SERVICE", "localhost")).getMessage();
    assertEquals(
        "Inference: $INFERBRIDGE_EXPANSION_SERVICE must be host:port, e.g. localhost:8097, got \"localhost\"", error);
  }

  @Test
  public void evaluateValidatesItsAddressAsInferenceDoes() {
    assertEquals(
        "Evaluate.withExpansionService(): expected host:port, e.g. localhost:8097, got \"localhost\"",
        assertThrows(IllegalArgumentException.class, () -> Evaluate.of("label").withExpansionService("localhost")).getMessage());
    assertThrows(IllegalArgumentException.class, () -> Evaluate.of("label").withLocalExpansionService(null));
    assertThrows(IllegalArgumentException.class, () -> BASE.withLocalExpansionService(null));
  }

  // ---- PythonEnvironment ----------------------------------------------------------------------

  @Test
  public void theCommandRunsTheServiceModuleOnAFreeLoopbackPortWithTheFlags() {
    PythonEnvironment env =
        PythonEnvironment.virtualenv("/opt/venv")
            .withModelRoots("/models", "gs://bucket/models")
            .withTrustedModelRoots("/models")
            .withAllowedModelClasses("mypkg.nets");
    assertEquals("/opt/venv/bin/python", env.getPython());
    assertEquals(
        Arrays.asList(
            "/opt/venv/bin/python", "-m", "inferbridge.expansion_service", "--host", "127.0.0.1", "--port", "0",
            "--log-level", "INFO", "--model-root=/models", "--model-root=gs://bucket/models",
            "--trusted-model-root=/models", "--allow-model-class=mypkg.nets"),
        env.command());
    assertEquals(
        "PythonEnvironment.virtualenv(\"/opt/venv\").withModelRoots(\"/models\", \"gs://bucket/models\")"
            + ".withTrustedModelRoots(\"/models\").withAllowedModelClasses(\"mypkg.nets\")",
        env.toString());
  }

  @Test
  public void environmentsAreValues() {
    PythonEnvironment a = PythonEnvironment.executable("/p/python").withTrustedModelRoots("/m");
    assertEquals(a, PythonEnvironment.executable("/p/python").withTrustedModelRoots("/m"));
    assertEquals(a.hashCode(), PythonEnvironment.executable("/p/python").withTrustedModelRoots("/m").hashCode());
    assertNotEquals(a, a.withTrustedModelRoots("/n"));
    assertEquals(Arrays.asList("/n"), a.withTrustedModelRoots("/n").getTrustedModelRoots()); // replaces
    assertEquals(Arrays.asList("/m"), a.getTrustedModelRoots()); // unchanged
    assertEquals(Duration.standardSeconds(180), a.getStartupTimeout());
  }

  @Test
  public void badArgumentsNameTheMethod() {
    assertEquals(
        "PythonEnvironment.virtualenv(): must be a non-empty path, got null",
        assertThrows(IllegalArgumentException.class, () -> PythonEnvironment.virtualenv(null)).getMessage());
    assertEquals(
        "PythonEnvironment.withTrustedModelRoots(): each value must be a non-empty string, got \" \"",
        assertThrows(IllegalArgumentException.class,
            () -> PythonEnvironment.executable("python3").withTrustedModelRoots("/m", " ")).getMessage());
    assertTrue(assertThrows(IllegalArgumentException.class,
        () -> PythonEnvironment.executable("python3").withStartupTimeout(Duration.ZERO)).getMessage()
        .startsWith("PythonEnvironment.withStartupTimeout(): the duration must be positive"));
  }

  // ---- starting a service -----------------------------------------------------------------------

  private static void assertContains(String text, String... parts) {
    for (String part : parts) {
      assertTrue("expected <" + part + "> in:\n" + text, text.contains(part));
    }
  }

  private static String startError(PythonEnvironment env) {
    return assertThrows(IllegalStateException.class, env::startExpansionService).getMessage();
  }

  /** An executable shell script standing in for Python. */
  private File fakePython(String body) throws IOException {
    File script = new File(tmp.newFolder(), "python");
    Files.write(script.toPath(), ("#!/bin/sh\n" + body + "\n").getBytes(StandardCharsets.UTF_8));
    assertTrue(script.setExecutable(true));
    return script;
  }

  @Test
  public void aMissingPythonIsNamedWithHowToCreateAnEnvironment() {
    String missing = new File(tmp.getRoot(), "nowhere/bin/python").getPath();
    String error = startError(PythonEnvironment.executable(missing));
    assertContains(error,
        "PythonEnvironment.executable(\"" + missing + "\")", missing + " does not exist",
        "python3 -m venv DIR && DIR/bin/pip install inferbridge", "scripts/bootstrap");
  }

  @Test
  public void aMissingOrIncompleteVirtualenvIsNamed() throws IOException {
    String missing = new File(tmp.getRoot(), "no-venv").getPath();
    assertContains(startError(PythonEnvironment.virtualenv(missing)), missing + " is not a directory", "pip install inferbridge");
    File empty = tmp.newFolder("empty-venv");
    assertContains(
        startError(PythonEnvironment.virtualenv(empty.getPath())),
        empty + " is not a virtualenv (there is no " + new File(empty, "bin/python") + ")", "scripts/bootstrap");
  }

  @Test
  public void aPythonThatCannotRunIsNamed() throws IOException {
    File notExecutable = tmp.newFile("python-not-executable");
    assertContains(startError(PythonEnvironment.executable(notExecutable.getPath())), notExecutable + " is not executable");
    assertContains(
        startError(PythonEnvironment.executable("no-such-python-anywhere")),
        "no-such-python-anywhere is not a command on the PATH");
  }

  @Test
  public void aPythonWithoutInferbridgeGivesTheInstallCommand() throws IOException {
    File python = fakePython(
        "echo \"$0: Error while finding module specification for 'inferbridge.expansion_service' "
            + "(ModuleNotFoundError: No module named 'inferbridge')\" >&2\nexit 1");
    String error = startError(PythonEnvironment.executable(python.getPath()));
    assertContains(error,
        "exited with status 1 before it listened: the inferbridge package is not installed in " + python,
        python + " -m pip install inferbridge", "No module named 'inferbridge'");
    // The brief form, too.
    File old = fakePython("echo 'No module named inferbridge'; exit 1");
    assertContains(startError(PythonEnvironment.executable(old.getPath())), "the inferbridge package is not installed in " + old);
  }

  @Test
  public void aMissingDependencyIsNamed() throws IOException {
    File python = fakePython("echo \"ModuleNotFoundError: No module named 'apache_beam'\" >&2; exit 1");
    assertContains(
        startError(PythonEnvironment.executable(python.getPath())),
        "the Python module apache_beam, which inferbridge needs, is not installed in " + python);
  }

  @Test
  public void aServiceThatExitsEarlyShowsItsLastLogLines() throws IOException {
    File python = fakePython("i=1; while [ $i -le 60 ]; do echo \"log line $i\"; i=$((i+1)); done; exit 3");
    String error = startError(PythonEnvironment.executable(python.getPath()));
    assertContains(error, "exited with status 3 before it listened", "log line 11\n", "log line 60");
    assertFalse(error, error.contains("log line 10\n"));
  }

  @Test
  public void aServiceThatDoesNotListenInTimeIsStopped() throws IOException {
    File pidFile = new File(tmp.getRoot(), "pid");
    File python = fakePython("echo $$ > " + pidFile + "; echo starting; exec sleep 300");
    long started = System.nanoTime();
    String error = startError(PythonEnvironment.executable(python.getPath()).withStartupTimeout(Duration.millis(1500)));
    assertTrue(System.nanoTime() - started < TimeUnit.SECONDS.toNanos(20));
    assertContains(error, "did not start listening within 1.5 s, and was stopped", "withStartupTimeout()", "starting");
    long pid = Long.parseLong(new String(Files.readAllBytes(pidFile.toPath()), StandardCharsets.UTF_8).trim());
    assertFalse(ProcessHandle.of(pid).map(ProcessHandle::isAlive).orElse(false));
  }

  /** A fake service: records its arguments, logs like the real one, and runs until stopped. */
  private File fakeService(File argsFile, int port) throws IOException {
    return fakePython(
        "echo \"$@\" > " + argsFile + "\n"
            + "echo 'WARNING:root:apitools not found'\n"
            + "echo \"2026-01-01 00:00:00,000 INFO inferbridge.expansion_service: InferBridge expansion service "
            + "0.1.0 (Apache Beam 2.77.0) listening on 127.0.0.1:" + port + "; serving beam:transform:x\"\n"
            + "exec sleep 300");
  }

  @Test
  public void aStartedServiceIsSharedPerEnvironmentAndStoppedWithTheJvm() throws Exception {
    File args = new File(tmp.getRoot(), "args");
    PythonEnvironment env = PythonEnvironment.executable(fakeService(args, 43210).getPath()).withTrustedModelRoots("/models");
    assertEquals("127.0.0.1:43210", env.startExpansionService());
    assertEquals(
        "-m inferbridge.expansion_service --host 127.0.0.1 --port 0 --log-level INFO --trusted-model-root=/models",
        new String(Files.readAllBytes(args.toPath()), StandardCharsets.UTF_8).trim());
    Process process = LocalExpansionService.running().get(env.command());
    assertTrue(process.isAlive());
    // Equal environments share the service; the start-up timeout is not part of the command.
    assertEquals("127.0.0.1:43210", env.withStartupTimeout(Duration.standardSeconds(5)).startExpansionService());
    assertEquals(1, LocalExpansionService.running().size());
    // Other flags: another service.
    PythonEnvironment other = env.withTrustedModelRoots("/other");
    assertEquals("127.0.0.1:43210", other.startExpansionService()); // the fake always logs this port
    assertEquals(2, LocalExpansionService.running().size());
    assertNotEquals(process.pid(), LocalExpansionService.running().get(other.command()).pid());

    LocalExpansionService.stopAll(); // what the shutdown hook runs
    assertTrue(process.waitFor(5, TimeUnit.SECONDS));
    assertTrue(LocalExpansionService.running().isEmpty());
  }

  @Test
  public void aServiceThatDiedIsStartedAgain() throws Exception {
    File args = new File(tmp.getRoot(), "args");
    PythonEnvironment env = PythonEnvironment.executable(fakeService(args, 43211).getPath());
    env.startExpansionService();
    Process first = LocalExpansionService.running().get(env.command());
    first.destroyForcibly().waitFor();
    env.startExpansionService();
    Process second = LocalExpansionService.running().get(env.command());
    assertNotEquals(first.pid(), second.pid());
    assertTrue(second.isAlive());
  }

  @Test
  public void inferenceAndEvaluateExpandThroughTheServiceTheyStart() throws Exception {
    PythonEnvironment env = PythonEnvironment.executable(fakeService(new File(tmp.getRoot(), "args"), 43212).getPath());
    String error = assertThrows(IllegalArgumentException.class,
        () -> input(pipeline()).apply(
            BASE.withLocalExpansionService(env).withExpansionClient(FakeExpansionService.failing("ValueError: no")))).getMessage();
    assertTrue(error, error.startsWith("Inference: the expansion service at 127.0.0.1:43212 rejected the configuration"));
    // An address given too takes precedence: nothing is started for it.
    PythonEnvironment missing = PythonEnvironment.executable("/no/such/python");
    error = assertThrows(IllegalArgumentException.class,
        () -> input(pipeline()).apply(BASE.withLocalExpansionService(missing).withExpansionService("localhost:1")
            .withExpansionClient(FakeExpansionService.failing("ValueError: no")))).getMessage();
    assertTrue(error, error.startsWith("Inference: the expansion service at localhost:1 rejected the configuration"));
  }

  @Test
  public void applyingWithAMissingPythonFailsAtConstructionWithTheClearError() {
    PythonEnvironment missing = PythonEnvironment.virtualenv("/no/such/venv");
    String error = assertThrows(IllegalStateException.class,
        () -> input(pipeline()).apply(BASE.withLocalExpansionService(missing))).getMessage();
    assertContains(error, "PythonEnvironment.virtualenv(\"/no/such/venv\")", "/no/such/venv is not a directory", "scripts/bootstrap");
    Schema scored = Schema.builder().addStringField("label").addStringField("inference").addStringField("model_id").build();
    Pipeline p = pipeline();
    PCollection<Row> rows = p.apply(Create.of(Row.withSchema(scored).addValues("1", "1", "m").build()).withRowSchema(scored));
    error = assertThrows(IllegalStateException.class,
        () -> rows.apply(Evaluate.of("label").withLocalExpansionService(missing))).getMessage();
    assertContains(error, "/no/such/venv is not a directory");
  }

  private static Pipeline pipeline() {
    PipelineOptions options = PipelineOptionsFactory.create();
    options.setRunner(CrashingRunner.class);
    return Pipeline.create(options);
  }

  private static PCollection<Row> input(Pipeline pipeline) {
    Row row = Row.withSchema(INPUT).addValues("a", Arrays.asList(1.0, 2.0)).build();
    return pipeline.apply(Create.of(row).withRowSchema(INPUT));
  }
}
