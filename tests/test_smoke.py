def test_quickstart_like_flow_runs(project):
    project.write_task("a.sh", "echo hello from $FEATHERFLOW_TASK_ID\n")
    project.write_flow({"name": "f", "tasks": [{"id": "a", "script": "a.sh"},
                                              {"id": "b", "script": "a.sh", "depends_on": ["a"]}]})
    result = project.sh("run", "f")
    assert result.code == 0, result.out + result.err
    app = project.app()
    run = app.store.runs.list_runs()[0]
    assert run.state == "success"
    assert {a.task_id: a.state for a in app.store.runs.attempts(run.id)} == {"a": "success", "b": "success"}
