"""The constraint suite: regexes and JSON schemas, each schema with hand-written valid instances."""

REGEXES = [
    r"\d{3}-\d{3}-\d{4}",
    r"[a-z]+@[a-z]+\.(com|org|net)",
    r"(yes|no|maybe)",
    r"-?\d+(\.\d+)?",
    r"[A-Z][a-z]{2,8}( [A-Z][a-z]{2,8}){0,2}",
    r"#[0-9a-fA-F]{6}",
    r"(0|[1-9]\d*)",
    r"\d{4}-\d{2}-\d{2}",
    r"[01]{8}",
    r"(ab|cd)+e?",
    r"https?://[a-z0-9]+(\.[a-z0-9]+)*(/[a-z0-9]*)*",
    r"\w+",
    r"[^\n]{1,20}",
    r"(\+|-)?[0-9]{1,5}",
    r"[a-z]{3}\d{3}",
    r"(true|false)",
    r"\(\d{3}\) \d{3}-\d{4}",
    r"[A-Z]{2}-\d{4}-[A-Z]{2}",
    r"(foo|bar|baz)(,(foo|bar|baz)){0,3}",
    r"\s*hello\s*",
    r"a{2,5}b{0,3}",
    r"[\u00e9\u00e8\u00ea]{1,3}x",
    r"(Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day",
    r"v\d+\.\d+\.\d+(-(alpha|beta|rc)\d*)?",
    r"[a-zA-Z_][a-zA-Z0-9_]{0,15}",
    r"\[(\d+(, \d+)*)?\]",
    r"<[a-z]+>[^<>]{0,10}</[a-z]+>",
    r"(\d{1,3}\.){3}\d{1,3}",
    r"\$\d+\.\d{2}",
    r"[aeiou]+[^aeiou\s\d]?",
    r"(\w+ ){2}\w+",
    r"x|xy|xyz",
    r"[+*?]{2}\{\}",
    r"(a|b)*c",
    r"\u65e5\u672c(\u8a9e|\u4eba)?",
]

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    "required": ["name", "age"],
}

LONG_KEYS = {
    "type": "object",
    "properties": {
        "customer_identification_number": {"type": "integer", "minimum": 0, "maximum": 9999},
        "transaction_description_text": {"type": "string", "maxLength": 8},
        "is_international_wire_transfer": {"type": "boolean"},
        "originating_branch_office_code": {"enum": ["north_east_region", "south_west_region"]},
    },
    "required": [
        "customer_identification_number",
        "transaction_description_text",
        "is_international_wire_transfer",
        "originating_branch_office_code",
    ],
}

# (schema, instances): instances are valid and spelled in property order.
SCHEMAS = [
    (PERSON, [{"name": "Ada", "age": 36}, {"name": "", "age": 0}, {"name": "Jo 日本", "age": 120}]),
    (
        {
            "type": "object",
            "properties": {
                "user": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer", "minimum": 1},
                        "email": {"type": "string", "format": "email"},
                    },
                    "required": ["id", "email"],
                },
                "active": {"type": "boolean"},
            },
            "required": ["user"],
        },
        [{"user": {"id": 7, "email": "a.b@example.com"}, "active": False}, {"user": {"id": 123456, "email": "x@y.io"}}],
    ),
    (
        {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 3},
        [["red"], ["blue", "blue", "green"]],
    ),
    ({"enum": ["small", "medium", "large", "extra large"]}, ["small", "extra large"]),
    ({"type": "number", "minimum": -10, "maximum": 10}, [-10, 10, 0, 3.25, -9.999, 0.5, -0.5]),
    ({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 100}, [1, 99, 50]),
    ({"type": "string", "pattern": "^[A-Z]{3}-\\d{3}$"}, ["ABC-123", "ZZZ-000"]),
    (
        {
            "type": "object",
            "properties": {
                "day": {"type": "string", "format": "date"},
                "id": {"type": "string", "format": "uuid"},
                "ip": {"type": "string", "format": "ipv4"},
            },
            "required": ["day", "id", "ip"],
        },
        [
            {"day": "2024-02-29", "id": "123e4567-e89b-12d3-a456-426614174000", "ip": "192.168.0.1"},
            {"day": "1999-12-31", "id": "00000000-0000-0000-0000-000000000000", "ip": "255.0.10.99"},
        ],
    ),
    (
        {
            "type": "object",
            "properties": {"at": {"type": "string", "format": "date-time"}, "clock": {"type": "string", "format": "time"}},
            "required": ["at"],
        },
        [{"at": "2020-01-01T00:00:00Z"}, {"at": "2021-06-30T23:59:59.5+02:00", "clock": "12:30:00Z"}],
    ),
    (
        {
            "type": "object",
            "properties": {
                "a": {"type": "integer"},
                "b": {"type": "string", "maxLength": 5},
                "c": {"type": "boolean"},
            },
        },
        [{}, {"b": "hi"}, {"a": -3, "c": True}, {"a": 1, "b": "", "c": False}],
    ),
    (
        {
            "type": "object",
            "properties": {
                "first": {"type": "null"},
                "middle": {"type": "integer", "minimum": -5, "maximum": 5},
                "last": {"type": "boolean"},
            },
            "required": ["middle"],
        },
        [{"middle": 0}, {"first": None, "middle": -5}, {"middle": 5, "last": True}],
    ),
    (
        {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 999}, {"type": "string", "maxLength": 5}, {"type": "null"}]},
        [0, 999, "abc", None],
    ),
    (
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{2}\\d{2}$"}, "qty": {"type": "integer", "minimum": 1, "maximum": 50}},
                "required": ["sku", "qty"],
            },
            "minItems": 0,
            "maxItems": 2,
        },
        [[], [{"sku": "AB12", "qty": 3}], [{"sku": "ZZ99", "qty": 50}, {"sku": "AA00", "qty": 1}]],
    ),
    (
        {
            "type": "object",
            "properties": {"version": {"const": "1.0"}, "kind": {"const": "event"}, "payload": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["version", "kind", "payload"],
        },
        [{"version": "1.0", "kind": "event", "payload": 4}],
    ),
    (
        {
            "type": "object",
            "properties": {
                "l1": {
                    "type": "object",
                    "properties": {
                        "l2": {
                            "type": "object",
                            "properties": {"l3": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 3}},
                            "required": ["l3"],
                        }
                    },
                    "required": ["l2"],
                }
            },
            "required": ["l1"],
        },
        [{"l1": {"l2": {"l3": []}}}, {"l1": {"l2": {"l3": [1, 2, 9]}}}],
    ),
    ({"type": ["string", "null"], "maxLength": 8}, ["", "abcdefgh", None]),
    (
        {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "minItems": 2, "maxItems": 4},
        [[0, 1], [0.5, 0.25, 1.0, 0.0]],
    ),
    (
        LONG_KEYS,
        [
            {
                "customer_identification_number": 42,
                "transaction_description_text": "rent",
                "is_international_wire_transfer": False,
                "originating_branch_office_code": "north_east_region",
            }
        ],
    ),
    (
        {
            "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x", "y"]}},
            "type": "object",
            "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
            "required": ["start", "end"],
        },
        [{"start": {"x": 0, "y": -1}, "end": {"x": 10, "y": 20}}],
    ),
    ({"enum": [1, "two", None, True]}, [1, "two", None, True]),
    (
        {"type": "object", "properties": {"note": {"type": "string"}, "score": {"type": "number"}}, "required": ["note", "score"]},
        [{"note": "anything \"goes\" \\ here\n", "score": -1.5e3}, {"note": "", "score": 0}],
    ),
    (
        {
            "type": "object",
            "properties": {
                "status": {"enum": ["ok", "error"]},
                "code": {"type": "integer", "minimum": 100, "maximum": 599},
                "tags": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 4}, "maxItems": 2},
            },
            "required": ["status", "code"],
        },
        [{"status": "ok", "code": 200}, {"status": "error", "code": 599, "tags": ["a", "abcd"]}],
    ),
]
