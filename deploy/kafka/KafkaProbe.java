// Small Kafka client used by deploy/kafka/kafka.sh. It is compiled once at
// fetch time against the kafka-clients jar in the cache, so that checking the
// broker costs one JVM start and no extra downloads.
//
//   KafkaProbe BOOTSTRAP wait TIMEOUT_SECONDS [PID]
//       Retry until the broker answers DescribeCluster and ListTopics.
//       Exit 0 when it does, 1 on timeout, 2 when process PID has exited.
//   KafkaProbe BOOTSTRAP list-topics
//   KafkaProbe BOOTSTRAP create-topic NAME PARTITIONS
//       Exit 0 also when the topic already exists.
//   KafkaProbe BOOTSTRAP produce TOPIC
//       One record per line of standard input (value = the line, no key).
//   KafkaProbe BOOTSTRAP consume TOPIC COUNT TIMEOUT_SECONDS
//       Print COUNT record values from the start of TOPIC (all partitions,
//       no consumer group). Exit 1 when fewer arrive before the timeout.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.Properties;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterOptions;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.ListTopicsOptions;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public final class KafkaProbe {
    private KafkaProbe() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            usage("missing arguments");
        }
        String bootstrap = args[0];
        String cmd = args[1];
        int code;
        switch (cmd) {
            case "wait":
                need(args, 3);
                code = waitReady(bootstrap, Integer.parseInt(args[2]),
                        args.length > 3 ? Optional.of(Long.parseLong(args[3])) : Optional.empty());
                break;
            case "list-topics":
                code = listTopics(bootstrap);
                break;
            case "create-topic":
                need(args, 4);
                code = createTopic(bootstrap, args[2], Integer.parseInt(args[3]));
                break;
            case "produce":
                need(args, 3);
                code = produce(bootstrap, args[2]);
                break;
            case "consume":
                need(args, 5);
                code = consume(bootstrap, args[2], Integer.parseInt(args[3]), Integer.parseInt(args[4]));
                break;
            default:
                usage("unknown command '" + cmd + "'");
                return;
        }
        System.exit(code);
    }

    private static void need(String[] args, int n) {
        if (args.length < n) {
            usage("command '" + args[1] + "' needs more arguments");
        }
    }

    private static void usage(String why) {
        System.err.println("KafkaProbe: " + why);
        System.err.println("usage: KafkaProbe BOOTSTRAP wait TIMEOUT_S [PID] | list-topics"
                + " | create-topic NAME PARTITIONS | produce TOPIC | consume TOPIC COUNT TIMEOUT_S");
        System.exit(64);
    }

    private static Properties adminProps(String bootstrap) {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.CLIENT_ID_CONFIG, "fleetmq-kafka-probe");
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "10000");
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MS_CONFIG, "100");
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");
        p.put(AdminClientConfig.RETRY_BACKOFF_MS_CONFIG, "100");
        p.put(AdminClientConfig.RETRY_BACKOFF_MAX_MS_CONFIG, "500");
        return p;
    }

    private static String describe(Throwable t) {
        Throwable c = t;
        while ((c instanceof ExecutionException) && c.getCause() != null) {
            c = c.getCause();
        }
        String msg = c.getMessage();
        return c.getClass().getSimpleName() + (msg == null ? "" : ": " + msg);
    }

    private static boolean alive(Optional<Long> pid) {
        return pid.map(p -> ProcessHandle.of(p).map(ProcessHandle::isAlive).orElse(false)).orElse(true);
    }

    private static int waitReady(String bootstrap, int timeoutSeconds, Optional<Long> pid) {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(timeoutSeconds);
        String lastError = "no attempt made";
        int attempts = 0;
        try (Admin admin = Admin.create(adminProps(bootstrap))) {
            while (true) {
                if (!alive(pid)) {
                    System.err.println("broker process " + pid.get() + " exited before it answered clients"
                            + " (last client error: " + lastError + ")");
                    return 2;
                }
                long leftMs = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
                if (leftMs <= 0) {
                    System.err.println("broker at " + bootstrap + " did not answer a metadata request within "
                            + timeoutSeconds + " s after " + attempts + " attempt(s); last error: " + lastError);
                    return 1;
                }
                int callMs = (int) Math.max(500, Math.min(3000, leftMs));
                attempts++;
                try {
                    DescribeClusterResult cluster =
                            admin.describeCluster(new DescribeClusterOptions().timeoutMs(callMs));
                    String clusterId = cluster.clusterId().get(callMs + 1000L, TimeUnit.MILLISECONDS);
                    int nodes = cluster.nodes().get(callMs + 1000L, TimeUnit.MILLISECONDS).size();
                    Set<String> topics = admin.listTopics(new ListTopicsOptions().timeoutMs(callMs).listInternal(true))
                            .names().get(callMs + 1000L, TimeUnit.MILLISECONDS);
                    if (nodes > 0) {
                        System.out.println("ready: " + bootstrap + " cluster " + clusterId + ", " + nodes
                                + " broker(s), " + topics.size() + " topic(s)");
                        return 0;
                    }
                    lastError = "metadata answer listed no brokers yet";
                } catch (Exception e) {
                    lastError = describe(e);
                }
                try {
                    Thread.sleep(250);
                } catch (InterruptedException ie) {
                    Thread.currentThread().interrupt();
                    return 1;
                }
            }
        }
    }

    private static int listTopics(String bootstrap) throws Exception {
        try (Admin admin = Admin.create(adminProps(bootstrap))) {
            for (String t : new TreeSet<>(admin.listTopics().names().get(15, TimeUnit.SECONDS))) {
                System.out.println(t);
            }
            return 0;
        } catch (Exception e) {
            System.err.println("list-topics on " + bootstrap + " failed: " + describe(e));
            return 1;
        }
    }

    private static int createTopic(String bootstrap, String name, int partitions) {
        try (Admin admin = Admin.create(adminProps(bootstrap))) {
            admin.createTopics(List.of(new NewTopic(name, partitions, (short) 1))).all().get(30, TimeUnit.SECONDS);
            System.out.println("created topic " + name + " with " + partitions + " partition(s)");
            return 0;
        } catch (Exception e) {
            Throwable c = e instanceof ExecutionException && e.getCause() != null ? e.getCause() : e;
            if (c instanceof TopicExistsException) {
                System.out.println("topic " + name + " already exists");
                return 0;
            }
            System.err.println("create-topic " + name + " on " + bootstrap + " failed: " + describe(e));
            return 1;
        }
    }

    private static int produce(String bootstrap, String topic) {
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.CLIENT_ID_CONFIG, "fleetmq-kafka-probe");
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "30000");
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "30000");
        p.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        int n = 0;
        try (KafkaProducer<String, String> producer =
                     new KafkaProducer<>(p, new StringSerializer(), new StringSerializer());
             BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
            List<Future<RecordMetadata>> sent = new ArrayList<>();
            String line;
            while ((line = in.readLine()) != null) {
                sent.add(producer.send(new ProducerRecord<>(topic, line)));
            }
            producer.flush();
            for (Future<RecordMetadata> f : sent) {
                f.get(30, TimeUnit.SECONDS);
                n++;
            }
            System.err.println("produced " + n + " record(s) to " + topic);
            return 0;
        } catch (Exception e) {
            System.err.println("produce to " + topic + " on " + bootstrap + " failed after " + n
                    + " acknowledged record(s): " + describe(e));
            return 1;
        }
    }

    private static int consume(String bootstrap, String topic, int count, int timeoutSeconds) {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.CLIENT_ID_CONFIG, "fleetmq-kafka-probe");
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(timeoutSeconds);
        int got = 0;
        try (KafkaConsumer<String, String> consumer =
                     new KafkaConsumer<>(p, new StringDeserializer(), new StringDeserializer())) {
            List<PartitionInfo> parts = consumer.partitionsFor(topic, Duration.ofSeconds(Math.max(1, timeoutSeconds)));
            if (parts == null || parts.isEmpty()) {
                System.err.println("consume: topic " + topic + " has no partitions (does it exist?)");
                return 1;
            }
            List<TopicPartition> tps = new ArrayList<>();
            for (PartitionInfo pi : parts) {
                tps.add(new TopicPartition(pi.topic(), pi.partition()));
            }
            consumer.assign(tps);
            consumer.seekToBeginning(tps);
            while (got < count && System.nanoTime() < deadline) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(500))) {
                    System.out.println(r.value());
                    if (++got >= count) {
                        break;
                    }
                }
            }
        } catch (Exception e) {
            System.err.println("consume from " + topic + " on " + bootstrap + " failed after " + got
                    + " record(s): " + describe(e));
            return 1;
        }
        if (got < count) {
            System.err.println("consume: got " + got + " of " + count + " record(s) from " + topic
                    + " within " + timeoutSeconds + " s");
            return 1;
        }
        return 0;
    }
}
