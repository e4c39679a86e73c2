//! `commitq web` over HTTP, against the project cluster: CSRF protection on
//! every action, escaping of everything from the database, a reader role's
//! pages and refusals, the Host check, and /metrics.

mod support;

use support::*;

#[tokio::test]
async fn an_action_needs_the_pages_token_and_the_dashboards_own_origin() {
    let db = db("web_csrf").await;
    let c = db.connect().await;
    enqueue(&c, "mail", "welcome", "{}").await;
    let id = claim_and_fail(&c, "mail", "boom").await;
    let web = Web::start(&db.url);
    let token = web.csrf();
    let path = format!("/jobs/{id}/retry");

    let none = web.post(&path, &[], "");
    assert_eq!(none.status, 403, "{}", none.body);
    let wrong = web.post(&path, &[], &format!("csrf={}", "0".repeat(token.len())));
    assert_eq!(wrong.status, 403, "{}", wrong.body);
    let foreign = web.post(
        &path,
        &[("Origin", "http://evil.example")],
        &format!("csrf={token}"),
    );
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    assert_eq!(job_state(&c, id).await, "discarded");

    let own_origin = web.url("");
    let ok = web.post(&path, &[("Origin", &own_origin)], &format!("csrf={token}"));
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert_eq!(
        ok.header("location").unwrap(),
        format!("/jobs/{id}?done=retry")
    );
    assert_eq!(job_state(&c, id).await, "available");

    // Pause and bulk actions are held to the same token.
    let pause = web.post("/queues/pause", &[], "queue=mail&csrf=nope");
    assert_eq!(pause.status, 403);
    let bulk = web.post("/jobs/bulk", &[], "action=cancel&state=available");
    assert_eq!(bulk.status, 403);
    assert_eq!(job_state(&c, id).await, "available");
}

#[tokio::test]
async fn text_from_the_database_is_shown_as_text_never_as_markup() {
    let db = db("web_escaping").await;
    let c = db.connect().await;
    let args = r#"{"name": "<script>alert('args')</script>"}"#;
    // Queue and kind names are restricted to a few characters; args and
    // error texts are free.
    enqueue(&c, "mail", "welcome", args).await;
    let id = claim_and_fail(&c, "mail", "<img src=x onerror=alert(1)>").await;
    let web = Web::start(&db.url);

    let job = web.get(&format!("/jobs/{id}"));
    assert_eq!(job.status, 200);
    // The text is there, escaped (askama writes numeric references).
    assert!(
        job.body
            .contains("&#60;script&#62;alert(&#39;args&#39;)&#60;/script&#62;"),
        "{}",
        job.body
    );
    assert!(
        job.body.contains("&#60;img src=x onerror=alert(1)&#62;"),
        "{}",
        job.body
    );
    for page in [
        job.body,
        web.get("/jobs?state=discarded").body,
        web.get("/queues").body,
    ] {
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<img src=x"), "{page}");
    }
    // And the browser would not run an inline script anyway.
    let csp = web.get("/").header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
}

#[tokio::test]
async fn a_reader_sees_no_action_and_is_refused_one() {
    let db = db("web_reader").await;
    let c = db.connect().await;
    enqueue(&c, "mail", "welcome", "{}").await;
    let id = claim_and_fail(&c, "mail", "boom").await;
    enqueue(&c, "mail", "welcome", "{}").await;
    let operator = Web::start(&db.url);
    let reader = Web::start(&login_role(&db, "web_test_reader", "commitq_reader").await);

    // The operator's pages have the buttons the reader's lack: the check
    // below would pass for a page that has none at all otherwise.
    let op_job = operator.get(&format!("/jobs/{id}")).body;
    assert!(op_job.contains("id=\"retry\""), "{op_job}");
    assert!(op_job.contains("method=\"post\""), "{op_job}");
    assert!(operator.get("/queues").body.contains(">Pause</button>"));
    for path in [
        format!("/jobs/{id}"),
        "/queues".into(),
        "/jobs?state=discarded".into(),
    ] {
        let page = reader.get(&path);
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert!(
            !page.body.contains("method=\"post\""),
            "{path}: {}",
            page.body
        );
    }

    let token = reader.csrf();
    for (path, form) in [
        (format!("/jobs/{id}/retry"), format!("csrf={token}")),
        (
            "/queues/pause".to_string(),
            format!("csrf={token}&queue=mail"),
        ),
        (
            "/jobs/bulk".to_string(),
            format!("csrf={token}&action=retry&state=discarded"),
        ),
    ] {
        let r = reader.post(&path, &[], &form);
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        assert!(r.body.contains("web_test_reader"), "{}", r.body);
    }
    assert_eq!(job_state(&c, id).await, "discarded");
}

#[tokio::test]
async fn pages_answer_only_to_their_own_host_name() {
    let db = db("web_host").await;
    let web = Web::start(&db.url);
    assert_eq!(web.get("/").status, 200);
    let port = web.addr.rsplit(':').next().unwrap();
    let local = http(
        &web.addr,
        "GET",
        "/",
        &[("Host", &format!("localhost:{port}"))],
        "",
    );
    assert_eq!(local.status, 200);
    // A name that was made to resolve to 127.0.0.1 (DNS rebinding).
    let rebound = http(
        &web.addr,
        "GET",
        "/",
        &[("Host", &format!("evil.example:{port}"))],
        "",
    );
    assert_eq!(rebound.status, 421);
}

#[tokio::test]
async fn every_page_renders_and_metrics_has_the_queue_gauges() {
    let db = db("web_pages").await;
    let c = db.connect().await;
    for _ in 0..3 {
        enqueue(&c, "mail", "welcome", "{}").await;
    }
    enqueue(&c, "sms", "send", "{}").await;
    let id = claim_and_fail(&c, "sms", "boom").await;
    c.batch_execute(
        "SELECT commitq.schedule(name => 'nightly', cron => '0 3 * * *', queue => 'mail', kind => 'digest');
         SELECT commitq.try_acquire_lease('builder', 'host-1', '1 hour');",
    )
    .await
    .unwrap();
    let web = Web::start(&db.url);
    for (path, expect) in [
        ("/", "Jobs finished per minute"),
        ("/queues", "mail"),
        ("/jobs?state=available", "welcome"),
        ("/jobs?state=discarded&queue=sms", &format!("/jobs/{id}")),
        (&format!("/jobs/{id}"), "boom"),
        ("/schedules", "nightly"),
        ("/keys", "Concurrency keys"),
        ("/leases", "builder"),
    ] {
        let r = web.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(r.body.contains(expect), "{path} lacks {expect}: {}", r.body);
    }
    assert_eq!(web.get("/jobs/999999").status, 404);
    assert_eq!(web.get("/jobs?state=lost").status, 400);

    let m = web.get("/metrics");
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .unwrap()
        .contains("openmetrics-text"));
    for line in [
        "commitq_queue_jobs{queue=\"mail\",state=\"available\"} 3",
        "commitq_queue_jobs{queue=\"mail\",state=\"running\"} 0",
        "commitq_queue_paused{queue=\"mail\"} 0",
        "# TYPE commitq_queue_latency_seconds gauge",
        "# UNIT commitq_queue_latency_seconds seconds",
    ] {
        assert!(
            m.body.lines().any(|l| l == line),
            "no {line:?} in\n{}",
            m.body
        );
    }
    assert!(m.body.trim_end().ends_with("# EOF"), "{}", m.body);
}
