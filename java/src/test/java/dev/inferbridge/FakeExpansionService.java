package dev.inferbridge;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import org.apache.beam.model.expansion.v1.ExpansionApi.DiscoverSchemaTransformRequest;
import org.apache.beam.model.expansion.v1.ExpansionApi.DiscoverSchemaTransformResponse;
import org.apache.beam.model.expansion.v1.ExpansionApi.ExpansionRequest;
import org.apache.beam.model.expansion.v1.ExpansionApi.ExpansionResponse;
import org.apache.beam.model.expansion.v1.ExpansionServiceGrpc;
import org.apache.beam.model.pipeline.v1.Endpoints.ApiServiceDescriptor;
import org.apache.beam.model.pipeline.v1.RunnerApi;
import org.apache.beam.sdk.coders.RowCoder;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.util.construction.ExpansionServiceClient;
import org.apache.beam.sdk.util.construction.ExpansionServiceClientFactory;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.stub.StreamObserver;

/**
 * An expansion service in this JVM: records the request, and answers with an error or with a
 * transform whose outputs are PCollections of Rows of the given schemas (tag to schema). Used as
 * the client factory of a transform, or served over gRPC ({@link #grpcService()}, see {@link
 * GrpcTestServer}).
 */
final class FakeExpansionService implements ExpansionServiceClientFactory {
  volatile ExpansionRequest request;
  private final String error;
  private final Map<String, Schema> outputs;
  private final boolean stagesArtifacts;

  private FakeExpansionService(String error, Map<String, Schema> outputs, boolean stagesArtifacts) {
    this.error = error;
    this.outputs = outputs;
    this.stagesArtifacts = stagesArtifacts;
  }

  private FakeExpansionService(String error, Map<String, Schema> outputs) {
    this(error, outputs, false);
  }

  /** Answers with the one output {@code tag} of Rows of {@code schema}, e.g. for Evaluate. */
  static FakeExpansionService returningOne(String tag, Schema schema) {
    return new FakeExpansionService(null, Collections.singletonMap(tag, schema));
  }

  /** The same answers, plus a new environment with an artifact to stage. */
  FakeExpansionService stagingArtifacts() {
    return new FakeExpansionService(error, outputs, true);
  }

  /** The answer to {@code expansionRequest}, which is recorded. */
  ExpansionResponse answer(ExpansionRequest expansionRequest) {
    request = expansionRequest;
    if (error != null) {
      return ExpansionResponse.newBuilder().setError(error).build();
    }
    return respond(expansionRequest);
  }

  /** This service as a gRPC expansion service; discovery answers with no transforms. */
  ExpansionServiceGrpc.ExpansionServiceImplBase grpcService() {
    return new ExpansionServiceGrpc.ExpansionServiceImplBase() {
      @Override
      public void expand(ExpansionRequest expansionRequest, StreamObserver<ExpansionResponse> response) {
        response.onNext(answer(expansionRequest));
        response.onCompleted();
      }

      @Override
      public void discoverSchemaTransform(
          DiscoverSchemaTransformRequest discover, StreamObserver<DiscoverSchemaTransformResponse> response) {
        response.onNext(DiscoverSchemaTransformResponse.getDefaultInstance());
        response.onCompleted();
      }
    };
  }

  static FakeExpansionService failing(String error) {
    return new FakeExpansionService(error, Collections.<String, Schema>emptyMap());
  }

  static FakeExpansionService returning(Schema inferences, Schema failures) {
    Map<String, Schema> outputs = new LinkedHashMap<>();
    outputs.put("inferences", inferences);
    outputs.put("failures", failures);
    return new FakeExpansionService(null, outputs);
  }

  @Override
  public ExpansionServiceClient getExpansionServiceClient(ApiServiceDescriptor endpoint) {
    return new ExpansionServiceClient() {
      @Override
      public ExpansionResponse expand(ExpansionRequest expansionRequest) {
        return answer(expansionRequest);
      }

      @Override
      public DiscoverSchemaTransformResponse discover(DiscoverSchemaTransformRequest discover) {
        throw new UnsupportedOperationException();
      }

      @Override
      public void close() {}
    };
  }

  private ExpansionResponse respond(ExpansionRequest request) {
    try {
      org.apache.beam.sdk.util.construction.SdkComponents sdk =
          org.apache.beam.sdk.util.construction.SdkComponents.create(
              request.getComponents(), Collections.<String>emptyList());
      String anyInput = request.getTransform().getInputsMap().values().iterator().next();
      String windowing = request.getComponents().getPcollectionsOrThrow(anyInput).getWindowingStrategyId();
      Map<String, RunnerApi.PCollection> pcollections = new LinkedHashMap<>();
      RunnerApi.PTransform.Builder transform = request.getTransform().toBuilder();
      for (Map.Entry<String, Schema> output : outputs.entrySet()) {
        String id = "fake_" + output.getKey();
        pcollections.put(
            id,
            RunnerApi.PCollection.newBuilder()
                .setUniqueName(id)
                .setCoderId(sdk.registerCoder(RowCoder.of(output.getValue())))
                .setIsBounded(RunnerApi.IsBounded.Enum.BOUNDED)
                .setWindowingStrategyId(windowing)
                .build());
        transform.putOutputs(output.getKey(), id);
      }
      RunnerApi.Components.Builder components = sdk.toComponents().toBuilder().putAllPcollections(pcollections);
      if (stagesArtifacts) {
        components.putEnvironments(
            "fake_staging",
            RunnerApi.Environment.newBuilder()
                .setUrn("beam:env:external:v1")
                .addDependencies(RunnerApi.ArtifactInformation.newBuilder().setTypeUrn("beam:artifact:type:file:v1"))
                .build());
      }
      return ExpansionResponse.newBuilder().setComponents(components).setTransform(transform).build();
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  @Override
  public void close() {}
}
