"""Load dkt's exports with the reference consumers and check what they find.

usage: check_provenance.py slsa FILE EXPECTED_DEPS
       check_provenance.py vsa FILE EXPECTED_RESULT
       check_provenance.py prov FILE MIN_ENTITIES MIN_ACTIVITIES MIN_DERIVATIONS
Prints what it found; exits non-zero (with the consumer's error) when a document does
not load or does not hold what is expected.
"""
import json
import sys


def slsa(path, expected_deps):
    from google.protobuf import json_format
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.statement import Statement
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2

    text = open(path).read()
    pb = json_format.Parse(text, statement_pb2.Statement())
    stmt = Statement.copy_from_pb(pb)
    stmt.validate()
    assert stmt.pb.predicate_type == "https://slsa.dev/provenance/v1", stmt.pb.predicate_type
    pred = json_format.ParseDict(
        json.loads(text)["predicate"], provenance_pb2.Provenance(), ignore_unknown_fields=False
    )
    deps = pred.build_definition.resolved_dependencies
    for d in deps:
        ResourceDescriptor.copy_from_pb(d).validate()
    assert len(deps) == expected_deps, f"{len(deps)} dependencies, expected {expected_deps}"
    assert pred.build_definition.build_type, "no buildType"
    assert pred.run_details.builder.id, "no builder id"
    print(f"slsa ok: subject {stmt.pb.subject[0].name}, {len(deps)} dependencies")


def vsa(path, expected_result):
    from google.protobuf import json_format
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.statement import Statement
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.predicates.vsa.v1 import vsa_pb2

    text = open(path).read()
    pb = json_format.Parse(text, statement_pb2.Statement())
    stmt = Statement.copy_from_pb(pb)
    stmt.validate()
    assert stmt.pb.predicate_type == "https://slsa.dev/verification_summary/v1", stmt.pb.predicate_type
    predicate = json.loads(text)["predicate"]
    # The SLSA spec (verification_summary/v1) makes verifiedLevels an array of strings;
    # the reference proto of in-toto-attestation 0.9.3 declares it one string (not
    # `repeated`), so it is checked here and the rest goes through the proto.
    levels = predicate.pop("verifiedLevels")
    assert isinstance(levels, list) and levels and all(isinstance(l, str) for l in levels), levels
    pred = json_format.ParseDict(predicate, vsa_pb2.VerificationSummary(), ignore_unknown_fields=False)
    assert pred.verifier.id, "no verifier id"
    assert pred.resource_uri, "no resourceUri"
    assert pred.time_verified.seconds > 0, "no timeVerified"
    assert pred.verification_result == expected_result, pred.verification_result
    for a in pred.input_attestations:
        assert a.uri and a.digest, "an input attestation lacks uri or digest"
    print(f"vsa ok: subject {stmt.pb.subject[0].name}, {pred.verification_result}")


def prov(path, min_entities, min_activities, min_derivations):
    from prov.model import ProvDocument, ProvEntity, ProvActivity, ProvDerivation, ProvUsage, ProvGeneration

    doc = ProvDocument.deserialize(source=path, format="json")
    recs = list(doc.get_records())
    count = lambda cls: sum(1 for r in recs if isinstance(r, cls))
    found = (count(ProvEntity), count(ProvActivity), count(ProvDerivation))
    assert found[0] >= min_entities, f"entities {found[0]} < {min_entities}"
    assert found[1] >= min_activities, f"activities {found[1]} < {min_activities}"
    assert found[2] >= min_derivations, f"derivations {found[2]} < {min_derivations}"
    assert count(ProvUsage) >= 1 if min_activities else True
    assert count(ProvGeneration) >= 1 if min_activities else True
    # Round trip through the library's own serializer.
    ProvDocument.deserialize(content=doc.serialize(format="json"), format="json")
    print(f"prov ok: {found[0]} entities, {found[1]} activities, {found[2]} derivations")


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "slsa":
        slsa(sys.argv[2], int(sys.argv[3]))
    elif kind == "vsa":
        vsa(sys.argv[2], sys.argv[3])
    else:
        prov(sys.argv[2], *map(int, sys.argv[3:6]))
