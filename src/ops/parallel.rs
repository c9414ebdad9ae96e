//! Runs a job over the items of one level at a time, at most `width` at once
//! on scoped threads (spec §11: `reapply` brings up independent projects
//! together, at most `PIC_PARALLEL`). Results come back in the items' order
//! whatever order they finished in, so a report built from them is the same
//! on every run. The workers' progress lines reach the caller's progress
//! sink as they happen, through a channel, since the sink itself is not
//! shared between threads.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

enum Msg<R> {
    Line(String),
    Done(usize, R),
}

/// `job(item, say)` for every item, `width` (at least 1) at a time. A job
/// that panics becomes `Err(message)` for its own item; the others carry on.
pub fn run_all<T, R, F>(
    items: &[T],
    width: usize,
    progress: &mut dyn FnMut(&str),
    job: F,
) -> Vec<Result<R, String>>
where
    T: Sync,
    R: Send,
    F: Fn(&T, &mut dyn FnMut(&str)) -> R + Sync,
{
    let mut results: Vec<Option<Result<R, String>>> = items.iter().map(|_| None).collect();
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<Msg<Result<R, String>>>();
    std::thread::scope(|scope| {
        for _ in 0..width.clamp(1, items.len().max(1)) {
            let tx = tx.clone();
            let (next, job) = (&next, &job);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(i) else { break };
                let mut say = |line: &str| {
                    let _ = tx.send(Msg::Line(line.to_string()));
                };
                let r = catch_unwind(AssertUnwindSafe(|| job(item, &mut say)))
                    .map_err(|p| panic_message(p.as_ref()));
                let _ = tx.send(Msg::Done(i, r));
            });
        }
        drop(tx);
        // Ends when every worker has dropped its sender.
        for msg in rx {
            match msg {
                Msg::Line(line) => progress(&line),
                Msg::Done(i, r) => results[i] = Some(r),
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("its worker ended without a result".into())))
        .collect()
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!("internal error (panic: {what})")
}

/// Groups ids into levels: each id comes in the level after the last of
/// the ids it `requires` (requirements that are not in `ids` are ignored),
/// ids in their given order within a level. A cycle is broken by taking the
/// first id that is left as a level of its own, as the sequential order did.
pub fn levels<'a>(ids: &[&'a str], requires: impl Fn(&str) -> Vec<String>) -> Vec<Vec<&'a str>> {
    let mut done: Vec<&str> = Vec::new();
    let mut left: Vec<&str> = ids.to_vec();
    let mut out = Vec::new();
    while !left.is_empty() {
        let ready: Vec<&str> = left
            .iter()
            .copied()
            .filter(|id| {
                requires(id)
                    .iter()
                    .all(|r| done.contains(&r.as_str()) || !ids.contains(&r.as_str()))
            })
            .collect();
        let level = if ready.is_empty() {
            vec![left[0]]
        } else {
            ready
        };
        left.retain(|id| !level.contains(id));
        done.extend(level.iter().copied());
        out.push(level);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[test]
    fn levels_follow_requires() {
        let req = |id: &str| -> Vec<String> {
            match id {
                "app" => vec!["db".into()],
                "web" => vec!["app".into(), "gone".into()],
                "x" => vec!["y".into()],
                "y" => vec!["x".into()],
                _ => vec![],
            }
        };
        assert_eq!(
            levels(&["app", "cache", "db", "web"], req),
            vec![vec!["cache", "db"], vec!["app"], vec!["web"]]
        );
        // A cycle still yields every id once.
        assert_eq!(
            levels(&["a", "x", "y"], req),
            vec![vec!["a"], vec!["x"], vec!["y"]]
        );
        assert!(levels(&[], req).is_empty());
    }

    #[test]
    fn results_in_item_order_at_most_width_at_once() {
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let items: Vec<u64> = (0..9).collect();
        let mut lines = Vec::new();
        let out = run_all(
            &items,
            3,
            &mut |l: &str| lines.push(l.to_string()),
            |n, say| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                say(&format!("item {n}"));
                // Later items finish first.
                std::thread::sleep(Duration::from_millis(60 - 5 * n));
                running.fetch_sub(1, Ordering::SeqCst);
                if *n == 4 {
                    panic!("item four broke");
                }
                n * 10
            },
        );
        assert_eq!(peak.load(Ordering::SeqCst), 3, "three ran at once");
        assert_eq!(out.len(), 9);
        for (n, r) in out.iter().enumerate() {
            if n == 4 {
                let e = r.as_ref().unwrap_err();
                assert!(e.contains("item four broke"), "{e}");
            } else {
                assert_eq!(r.as_ref().unwrap(), &(n as u64 * 10));
            }
        }
        lines.sort();
        assert_eq!(lines.len(), 9, "every worker's line reached the sink");
    }

    #[test]
    fn width_one_runs_one_at_a_time() {
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let out = run_all(&[1, 2, 3], 1, &mut |_: &str| {}, |n, _| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(10));
            running.fetch_sub(1, Ordering::SeqCst);
            *n
        });
        assert_eq!(peak.load(Ordering::SeqCst), 1);
        assert_eq!(out, vec![Ok(1), Ok(2), Ok(3)]);
    }
}
