//! The narration: what happens, when (seconds since the run began), and what it proves. Printed
//! as it happens, to stdout for `-o table` and to stderr for `-o json` (stdout is then only the
//! JSON document).

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

/// Where the story goes.
pub struct Narrator {
    out: Mutex<Box<dyn Write + Send>>,
    run_start: Mutex<Instant>,
}

impl Narrator {
    pub fn new(to_stderr: bool) -> Self {
        let out: Box<dyn Write + Send> = if to_stderr {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        };
        Narrator {
            out: Mutex::new(out),
            run_start: Mutex::new(Instant::now()),
        }
    }

    fn write(&self, text: &str) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A closed pipe (`| head`) must not abort the demo before it cleans up.
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    /// A line as is.
    pub fn line(&self, text: &str) {
        self.write(text);
    }

    /// Starts the clock of a run and prints its title.
    pub fn run(&self, title: &str) {
        *self.run_start.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.write(&format!("\n  {title}"));
    }

    /// Seconds since the run began.
    pub fn elapsed(&self) -> f64 {
        self.run_start
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            .as_secs_f64()
    }

    /// An event, stamped with the run's clock; later lines of `text` are indented under it.
    pub fn at(&self, text: &str) {
        let stamp = format!("   {:>6.2}s  ", self.elapsed());
        let pad = " ".repeat(stamp.len());
        let mut lines = text.lines();
        let mut block = format!("{stamp}{}", lines.next().unwrap_or(""));
        for l in lines {
            block.push('\n');
            block.push_str(&pad);
            block.push_str(l);
        }
        self.write(&block);
    }

    /// A continuation of the last event.
    pub fn more(&self, text: &str) {
        for l in text.lines() {
            self.write(&format!("             {l}"));
        }
    }
}
