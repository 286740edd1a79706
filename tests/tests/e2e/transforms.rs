//! Tenants' transform components in the host's own sandbox (`webhooks_host::transform`): the
//! examples answer as SPEC.md section 10 says, faulty components fail their own call only and
//! within their limits, other worlds and non-components are refused, and compiled code is kept
//! on disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use webhooks_host::transform::{Action, Message, TransformError, TransformLimits, Transforms};
use webhooks_tests::{example_transform_bytes, plugin_component, transform_variant_bytes};

fn message(payload: &[u8]) -> Message {
    Message {
        payload: payload.to_vec(),
        content_type: Some("application/json".into()),
        subtopic: "room/1".into(),
        thing_id: "5e0a1a44-0000-4000-8000-000000000001".into(),
        message_id: "01a23c61-1df9-7000-b46c-27968b44f10a".into(),
    }
}

fn cache_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("webhooks-transform-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn transforms(limits: TransformLimits) -> anyhow::Result<Arc<Transforms>> {
    Transforms::new(limits, None)
}

fn sent_body(action: &Action) -> anyhow::Result<String> {
    match action {
        Action::Send(changes) => Ok(String::from_utf8(changes.body.clone().unwrap_or_default())?),
        Action::Skip(reason) => anyhow::bail!("skipped: {reason}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transform_changes_body_headers_and_path() -> anyhow::Result<()> {
    let transforms = transforms(TransformLimits::default())?;
    let sha = transforms.load(&transform_variant_bytes("echo")?)?;
    assert_eq!(sha.len(), 64);
    let action = transforms
        .apply(&sha, &message(b"{\"t\":1}"), r#"{"site":"a"}"#)
        .await?;
    let Action::Send(changes) = action else {
        anyhow::bail!("echo skipped")
    };
    assert_eq!(changes.body.as_deref(), Some(&br#"{"site":"a"}|{"t":1}"#[..]));
    assert_eq!(changes.headers, vec![("x-transformed".to_owned(), "yes".to_owned())]);
    assert_eq!(changes.path, "/echoed");
    assert_eq!(changes.content_type, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_filter_format_and_flatten() -> anyhow::Result<()> {
    let transforms = transforms(TransformLimits::default())?;
    let threshold = transforms.load(&example_transform_bytes("threshold_filter")?)?;
    let settings = r#"{"transform":{"field":"temperature","above":30}}"#;
    let hot = transforms
        .apply(&threshold, &message(br#"{"temperature":31.5}"#), settings)
        .await?;
    assert!(
        matches!(&hot, Action::Send(changes) if changes.body.is_none()),
        "{hot:?}"
    );
    let mild = transforms
        .apply(&threshold, &message(br#"{"temperature":20}"#), settings)
        .await?;
    assert!(matches!(mild, Action::Skip(_)), "{mild:?}");
    let not_json = transforms.apply(&threshold, &message(b"hello"), settings).await?;
    assert!(matches!(not_json, Action::Skip(_)), "{not_json:?}");
    let unset = transforms
        .apply(&threshold, &message(br#"{"temperature":31}"#), "{}")
        .await;
    assert!(matches!(unset, Err(TransformError::Failed(_))), "{unset:?}");

    let slack = transforms.load(&example_transform_bytes("slack_message")?)?;
    let action = transforms.apply(&slack, &message(b"door open"), "{}").await?;
    let Action::Send(changes) = &action else {
        anyhow::bail!("slack skipped")
    };
    assert_eq!(changes.content_type.as_deref(), Some("application/json"));
    let text: serde_json::Value = serde_json::from_str(&sent_body(&action)?)?;
    assert_eq!(
        text,
        serde_json::json!({"text": "5e0a1a44-0000-4000-8000-000000000001: door open"})
    );

    let senml = transforms.load(&example_transform_bytes("senml_flatten")?)?;
    let pack = br#"[{"bn":"dev1/","n":"temp","v":21.5},{"n":"door","vb":true},{"n":"label","vs":"hall"}]"#;
    let action = transforms.apply(&senml, &message(pack), "{}").await?;
    let flat: serde_json::Value = serde_json::from_str(&sent_body(&action)?)?;
    assert_eq!(
        flat,
        serde_json::json!({"dev1/temp": 21.5, "dev1/door": true, "dev1/label": "hall"})
    );
    let not_senml = transforms.apply(&senml, &message(br#"{"a":1}"#), "{}").await?;
    assert!(matches!(not_senml, Action::Skip(_)), "{not_senml:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transform_past_its_deadline_is_stopped() -> anyhow::Result<()> {
    let limits = TransformLimits::default();
    let transforms = transforms(limits)?;
    let spin = transforms.load(&transform_variant_bytes("spin")?)?;
    let started = Instant::now();
    let stopped = transforms.apply(&spin, &message(b"{}"), "{}").await;
    assert!(matches!(stopped, Err(TransformError::Deadline(_))), "{stopped:?}");
    // A wide margin over the 10 ms: this checks that the deadline stops it, not how fast.
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    let slow = transforms.load(&transform_variant_bytes("slow")?)?;
    let overran = transforms.apply(&slow, &message(b"{}"), "{}").await;
    assert!(matches!(overran, Err(TransformError::Deadline(_))), "{overran:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_transforms_fail_their_own_call_within_the_limits() -> anyhow::Result<()> {
    // A deadline long enough that, on a busy machine, the memory and answer limits are what
    // stop these, not the time.
    let limits = TransformLimits {
        deadline: Duration::from_secs(1),
        ..TransformLimits::default()
    };
    let transforms = transforms(limits)?;
    let echo = transforms.load(&transform_variant_bytes("echo")?)?;

    let grow = transforms.load(&transform_variant_bytes("grow")?)?;
    let bomb = transforms.apply(&grow, &message(b"{}"), "{}").await;
    assert!(
        matches!(bomb, Err(TransformError::Memory(limit)) if limit == limits.memory_bytes),
        "{bomb:?}"
    );

    let huge = transforms.load(&transform_variant_bytes("huge")?)?;
    let answer = transforms.apply(&huge, &message(b"{}"), "{}").await;
    assert!(
        matches!(answer, Err(TransformError::AnswerTooLarge { size, limit }) if size == 4 << 20 && limit == 1 << 20),
        "{answer:?}"
    );

    let trap = transforms.load(&transform_variant_bytes("trap")?)?;
    let trapped = transforms.apply(&trap, &message(b"{}"), "{}").await;
    assert!(matches!(&trapped, Err(TransformError::Trap(_))), "{trapped:?}");

    // Every fault stayed in its own call: the well-behaved one still answers, many at once,
    // beside a spinning one.
    let spin = transforms.load(&transform_variant_bytes("spin")?)?;
    let spinning = {
        let transforms = transforms.clone();
        tokio::spawn(async move { transforms.apply(&spin, &message(b"{}"), "{}").await })
    };
    let mut calls = Vec::new();
    for i in 0..50 {
        let transforms = transforms.clone();
        let echo = echo.clone();
        calls.push(tokio::spawn(async move {
            transforms.apply(&echo, &message(format!("{i}").as_bytes()), "{}").await
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(sent_body(&call.await??)?, format!("{{}}|{i}"));
    }
    assert!(matches!(spinning.await?, Err(TransformError::Deadline(_))));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_deadline_lets_a_slow_transform_finish() -> anyhow::Result<()> {
    let transforms = transforms(TransformLimits {
        deadline: Duration::from_millis(2_000),
        ..TransformLimits::default()
    })?;
    let slow = transforms.load(&transform_variant_bytes("slow")?)?;
    let action = transforms.apply(&slow, &message(b"{}"), "{}").await?;
    assert!(matches!(action, Action::Send(_)), "{action:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_a_transform_is_refused() -> anyhow::Result<()> {
    let transforms = transforms(TransformLimits {
        component_bytes: 64 << 20,
        ..TransformLimits::default()
    })?;
    // The webhooks plugin is a component of another world: it imports the store and exports
    // no transformation.
    let plugin = std::fs::read(plugin_component())?;
    let refused = transforms.load(&plugin);
    assert!(matches!(&refused, Err(TransformError::Invalid(_))), "{refused:?}");
    let garbage = transforms.load(b"not wasm at all");
    assert!(matches!(&garbage, Err(TransformError::Invalid(_))), "{garbage:?}");

    let small = Transforms::new(TransformLimits::default(), None)?;
    let too_large = small.load(&plugin);
    assert!(
        matches!(too_large, Err(TransformError::TooLarge { limit, .. }) if limit == 2 << 20),
        "{too_large:?}"
    );
    let unknown = small.apply(&"0".repeat(64), &message(b"{}"), "{}").await;
    assert!(matches!(unknown, Err(TransformError::Unknown(_))), "{unknown:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_transforms_are_kept_on_disk() -> anyhow::Result<()> {
    let dir = cache_dir("cache");
    let bytes = transform_variant_bytes("echo")?;
    let first = Transforms::new(TransformLimits::default(), Some(dir.clone()))?;
    let sha = first.load(&bytes)?;
    let kept: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
    assert_eq!(kept.len(), 1, "one compiled file");
    assert!(kept[0].file_name().to_string_lossy().starts_with(&sha));
    drop(first);

    let second = Transforms::new(TransformLimits::default(), Some(dir.clone()))?;
    let started = Instant::now();
    assert_eq!(second.load(&bytes)?, sha);
    let mapped = started.elapsed();
    assert!(second.apply(&sha, &message(b"x"), "{}").await.is_ok());
    println!("loading a cached transform took {mapped:?}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
