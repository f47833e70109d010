"""Touches to the generated OpenAPI schema."""

# Run ids and positions in paths are `<int:...>` converters: digits only, so the
# schema says so, and clients (and schemathesis) do not send ids no route can match.
MAX_ID = 2**63 - 1


def bound_path_ids(result, generator, request, public):
    for path in result.get("paths", {}).values():
        for operation in path.values():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if parameter.get("in") == "path" and parameter.get("schema", {}).get("type") == "integer":
                    parameter["schema"].update(minimum=0, maximum=MAX_ID)
    return result
