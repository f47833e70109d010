from rest_framework.renderers import JSONRenderer

from runs import jsoninput


class SafeJSONRenderer(JSONRenderer):
    """DRF's JSON renderer. A stored value nested deeper than the standard encoder goes
    (a row written before DURABLE_JSON_MAX_DEPTH existed) is written by runs.jsoninput's
    encoder without recursion instead of failing: the same JSON, never a 500."""

    def render(self, data, accepted_media_type=None, renderer_context=None):
        try:
            return super().render(data, accepted_media_type, renderer_context)
        except RecursionError:
            return jsoninput.flat(data, default=self.encoder_class().default).encode()
