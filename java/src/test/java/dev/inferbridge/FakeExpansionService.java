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
import org.apache.beam.model.pipeline.v1.Endpoints.ApiServiceDescriptor;
import org.apache.beam.model.pipeline.v1.RunnerApi;
import org.apache.beam.sdk.coders.RowCoder;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.util.construction.ExpansionServiceClient;
import org.apache.beam.sdk.util.construction.ExpansionServiceClientFactory;

/**
 * An expansion service in this JVM: records the request, and answers with an error or with a
 * transform whose outputs are PCollections of Rows of the given schemas (tag to schema).
 */
final class FakeExpansionService implements ExpansionServiceClientFactory {
  ExpansionRequest request;
  private final String error;
  private final Map<String, Schema> outputs;

  private FakeExpansionService(String error, Map<String, Schema> outputs) {
    this.error = error;
    this.outputs = outputs;
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
        request = expansionRequest;
        if (error != null) {
          return ExpansionResponse.newBuilder().setError(error).build();
        }
        return respond(expansionRequest);
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
      RunnerApi.Components components = sdk.toComponents().toBuilder().putAllPcollections(pcollections).build();
      return ExpansionResponse.newBuilder().setComponents(components).setTransform(transform).build();
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  @Override
  public void close() {}
}
