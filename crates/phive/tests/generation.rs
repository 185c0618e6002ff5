//! One choice's output state with scripted logits: stop tokens, stop strings, length,
//! cancellation, logprobs and length validation, independent of any network.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use phive::engine::{
    check_lengths, Delta, FinishReason, Generation, GenerationParams, SamplingParams, Scores,
};
use phive::prompt::PromptTokens;

fn tokenizer() -> tokenizers::Tokenizer {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/phi3v-tiny/tokenizer.json");
    tokenizers::Tokenizer::from_file(path).unwrap()
}

/// Logits that put all mass on `token`.
fn logits_for(token: u32) -> Vec<f32> {
    let mut l = vec![0.0; 32064];
    l[token as usize] = 20.0;
    l
}

const END: u32 = 32007;

/// Feeds `script` to a [`Generation`] as the engine would, streaming deltas to `on_delta`
/// (`Break` plays a caller that went away).
fn run(
    script: Vec<u32>,
    params: GenerationParams,
    mut on_delta: impl FnMut(&Delta) -> ControlFlow<()>,
) -> phive::Result<phive::engine::Completion> {
    let tok = tokenizer();
    let prompt = PromptTokens { ids: vec![1, 450, 4799], media: vec![] };
    check_lengths(prompt.ids.len(), &params, 4096)?;
    let mut generation = Generation::new(&prompt, &params, None, 4096, Instant::now());
    generation.mark_scheduled(0);
    let mut step = 0;
    let reason = loop {
        let token = script[step.min(script.len() - 1)];
        step += 1;
        let advance = generation.advance(&Scores::Logits(logits_for(token)), &tok, &[END, 32000])?;
        if let Some(delta) = &advance.delta {
            if on_delta(delta).is_break() {
                break FinishReason::Cancelled;
            }
        }
        if let Some(reason) = advance.finished {
            break reason;
        }
    };
    let (tail, completion) = generation.finish(reason, &tok)?;
    if let Some(delta) = tail {
        let _ = on_delta(&delta);
    }
    Ok(completion)
}

/// A greedy choice handed only the argmax (as the engine does on a GPU) streams what it
/// streams when handed the logits; a choice that needs more than the argmax refuses it.
#[test]
fn greedy_choices_take_the_argmax_alone() {
    let tok = tokenizer();
    let prompt = PromptTokens { ids: vec![1, 450, 4799], media: vec![] };
    let mut script = ids("The sky is blue.");
    script.push(END);
    let texts: Vec<String> = [false, true]
        .into_iter()
        .map(|argmax| {
            let mut g = Generation::new(&prompt, &GenerationParams::default(), None, 4096, Instant::now());
            g.mark_scheduled(0);
            assert!(g.picks_argmax());
            let mut text = String::new();
            for &token in &script {
                let scores = if argmax { Scores::Argmax(token) } else { Scores::Logits(logits_for(token)) };
                let step = g.advance(&scores, &tok, &[END]).unwrap();
                text.extend(step.delta.map(|d| d.text));
                if step.finished.is_some() {
                    break;
                }
            }
            text
        })
        .collect();
    assert_eq!(texts[0], "The sky is blue.");
    assert_eq!(texts[0], texts[1]);
    let sampling = |s: SamplingParams| GenerationParams { sampling: s, ..Default::default() };
    for params in [
        GenerationParams { logprobs: Some(2), ..Default::default() },
        sampling(SamplingParams { temperature: Some(0.7), ..Default::default() }),
        sampling(SamplingParams { repetition_penalty: Some(1.3), ..Default::default() }),
        sampling(SamplingParams { presence_penalty: Some(0.5), ..Default::default() }),
    ] {
        let mut g = Generation::new(&prompt, &params, None, 4096, Instant::now());
        assert!(!g.picks_argmax(), "{params:?}");
        assert!(g.advance(&Scores::Argmax(450), &tok, &[END]).is_err());
    }
}

fn ids(text: &str) -> Vec<u32> {
    tokenizer().encode(text, false).unwrap().get_ids().to_vec()
}

#[test]
fn stops_at_a_stop_token_and_streams_everything_before_it() {
    let mut script = ids("The sky is blue.");
    script.push(END);
    let mut streamed = String::new();
    let c = run(script, GenerationParams::default(), |d| {
        streamed.push_str(&d.text);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(c.finish_reason, FinishReason::Stop);
    assert_eq!(c.text, "The sky is blue.");
    assert_eq!(streamed, c.text);
    assert_eq!(*c.tokens.last().unwrap(), END);
}

#[test]
fn stop_string_truncates_and_never_streams() {
    let script = ids("Answer: 42</answer> and more text");
    let params = GenerationParams { stop: vec!["</answer>".into()], ..Default::default() };
    let mut streamed = String::new();
    let c = run(script, params, |d| {
        streamed.push_str(&d.text);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(c.finish_reason, FinishReason::Stop);
    assert_eq!(c.text, "Answer: 42");
    assert_eq!(streamed, "Answer: 42");
}

/// Each delta says how many tokens it carries: text held back (a possible stop string, a
/// character split over byte tokens) arrives with all of its tokens, and none is counted twice.
#[test]
fn deltas_carry_every_token_once() {
    let script = ids("one </ans two 🌊 three");
    let params = GenerationParams {
        stop: vec!["</answer>".into()],
        max_tokens: Some(script.len()),
        ..Default::default()
    };
    let mut carried = Vec::new();
    let c = run(script.clone(), params, |d| {
        carried.push(d.tokens);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(c.finish_reason, FinishReason::Length);
    assert_eq!(c.tokens, script);
    assert_eq!(carried.iter().sum::<usize>(), script.len(), "{carried:?}");
    assert!(carried.iter().any(|&n| n > 1), "nothing was held back: {carried:?}");
    assert!(carried.len() < script.len(), "{carried:?}");
}

#[test]
fn max_tokens_gives_length() {
    let script = ids("one two three four five six seven eight nine ten");
    let params = GenerationParams { max_tokens: Some(3), ..Default::default() };
    let c = run(script.clone(), params, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(c.finish_reason, FinishReason::Length);
    assert_eq!(c.tokens, script[..3].to_vec());
    assert_eq!(c.usage.completion_tokens, 3);
    assert_eq!(c.usage.prompt_tokens, 3);
}

#[test]
fn breaking_the_callback_cancels() {
    let script = ids("one two three four five six seven eight nine ten");
    let mut calls = 0;
    let c = run(script, GenerationParams::default(), |_| {
        calls += 1;
        if calls == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(c.finish_reason, FinishReason::Cancelled);
    assert_eq!(calls, 2);
}

#[test]
fn logprobs_cover_each_generated_token() {
    let mut script = ids("Hi there");
    script.push(END);
    let params = GenerationParams { logprobs: Some(3), ..Default::default() };
    let mut streamed = Vec::new();
    let c = run(script.clone(), params, |d| {
        streamed.extend(d.logprobs.iter().map(|l| l.chosen.token_id));
        ControlFlow::Continue(())
    })
    .unwrap();
    let generated: Vec<u32> = script[..script.len() - 1].to_vec();
    assert_eq!(c.logprobs.iter().map(|l| l.chosen.token_id).collect::<Vec<_>>(), generated);
    assert_eq!(streamed, generated);
    for lp in &c.logprobs {
        assert_eq!(lp.top_logprobs.len(), 3);
        assert_eq!(lp.top_logprobs[0].token_id, lp.chosen.token_id);
        assert!(lp.chosen.logprob <= 0.0 && lp.chosen.logprob > -1e-3);
    }
}

#[test]
fn prompt_over_context_is_rejected_and_bad_params_too() {
    let err = check_lengths(10, &GenerationParams::default(), 10).unwrap_err();
    assert!(err.to_string().contains("context length"), "{err}");
    let params = GenerationParams { max_tokens: Some(0), ..Default::default() };
    assert!(run(vec![5], params, |_| ControlFlow::Continue(())).is_err());
    // Prompt plus max_tokens beyond the context: OpenAI's 400, naming both numbers.
    let params = GenerationParams { max_tokens: Some(10_000_000), ..Default::default() };
    let err = check_lengths(100, &params, 4096).unwrap_err().to_string();
    assert!(err.contains("maximum context length is 4096") && err.contains("10000100"), "{err}");
    assert!(check_lengths(100, &GenerationParams { max_tokens: Some(3996), ..params }, 4096).is_ok());
}
