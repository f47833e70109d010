from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from runs import jsoninput
from runs.jsoninput import JSONInputError


class StrictJSONParser(JSONParser):
    """JSON parsed by runs.jsoninput, like every other door: NaN and Infinity refused, and
    a 400 naming the limit for a body over DURABLE_JSON_MAX_BYTES or nested too deeply."""

    def parse(self, stream, media_type=None, parser_context=None):
        # One byte more than the limit is enough to know the body is over it.
        body = stream.read(jsoninput.max_bytes() + 1)
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        if encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
            try:
                body = body.decode(encoding).encode("utf-8")
            except (LookupError, UnicodeError) as exc:
                raise ParseError(f"JSON parse error - the body is not {encoding} text: {exc}") from None
        try:
            return jsoninput.parse(body, what="The request body", check=False)
        except JSONInputError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
