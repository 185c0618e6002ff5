//! Rendering the checkpoint's Jinja chat template the way `transformers` does
//! (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`).

use minijinja::{context, Environment, ErrorKind};

use super::RenderedMessage;
use crate::{Error, Result};

/// A compiled chat template with the special tokens it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported with the template's own message.
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::Template(format!("cannot compile the chat template: {e}")))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
        })
    }

    /// Renders the conversation, ending with the assistant prompt when `add_generation_prompt`.
    pub fn render(&self, messages: &[RenderedMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template("chat").map_err(|e| Error::Template(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| Error::Template(format!("cannot render the conversation: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHI3V: &str = "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n' }}{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{- '<|assistant|>\n' -}}{% endif %}";

    fn msg(role: &str, content: &str) -> RenderedMessage {
        RenderedMessage { role: role.into(), content: content.into(), tools: None }
    }

    #[test]
    fn renders_phi3v_template() {
        let t = ChatTemplate::new(PHI3V, Some("<s>"), Some("<|endoftext|>")).unwrap();
        let out = t.render(&[msg("system", "Be brief."), msg("user", "<|image_1|>\nHi")], true).unwrap();
        assert_eq!(out, "<|system|>\nBe brief.<|end|>\n<|user|>\n<|image_1|>\nHi<|end|>\n<|assistant|>\n");
        let no_prompt = t.render(&[msg("user", "Hi")], false).unwrap();
        assert_eq!(no_prompt, "<|user|>\nHi<|end|>\n");
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", None, None).unwrap();
        let err = t.render(&[], true).unwrap_err().to_string();
        assert!(err.contains("roles must alternate"), "{err}");
    }

    #[test]
    fn python_string_methods_work() {
        let t = ChatTemplate::new("{{ messages[0]['content'].strip().upper() }}", None, None).unwrap();
        assert_eq!(t.render(&[msg("user", "  hi ")], false).unwrap(), "HI");
    }
}
